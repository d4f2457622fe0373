// Emotion: how people feel along the journey (`query emotion`). The emotion map (persons
// and drop-off per stage, the moments of truth), NPS, CSAT and CES per stage with their
// intervals and counts ("not enough data" where the API says so), sentiment with the terms
// behind the complaints and example comments, the scores over time, and by the channel,
// asset or campaign of the touch before each answer.

import { h, field, select } from "../lib/dom.js";
import { card } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { header, run, grid, axis, tooltip, legend, intervals } from "../lib/view.js";
import { int, num, pct } from "../lib/format.js";

const SURVEYS = [
  { key: "nps", label: "NPS", min: -100, max: 100, fmt: (v) => (v === null || v === undefined ? "–" : `${v > 0 ? "+" : ""}${num(v)}`), color: "#2456d6" },
  { key: "csat", label: "CSAT", min: 0, max: 1, fmt: pct, color: "#19a979" },
  { key: "ces", label: "CES", min: 1, max: 7, fmt: (v) => (v === null || v === undefined ? "–" : v.toFixed(2)), color: "#e8743b" },
];
const GROUPS_SHOWN = 12;
const compound = (v) => (v === null || v === undefined ? "–" : v.toFixed(2));

/** "85% [76%–91%] (93)", or what the API says instead of a number. */
function scoreText(s, fmt) {
  if (s.status === "ok") return `${fmt(s.score)} [${fmt(s.ci_low)}–${fmt(s.ci_high)}] (${int(s.responses)})`;
  if (s.status === "no data") return "no data";
  return `${s.status} (${int(s.responses)})`;
}

function sentimentText(s) {
  if (s.status === "ok") return `${compound(s.mean_compound)} [${compound(s.ci_low)}–${compound(s.ci_high)}] (${int(s.texts)})`;
  if (s.status === "no data") return "no data";
  return `${s.status} (${int(s.texts)})`;
}

const value = (s) => (s.status === "ok" ? s.score : null);

/** NPS, CSAT and CES side by side, one small chart each: a point per category and its interval. */
function scoresOption(categories, feelings) {
  const third = 100 / 3;
  const grids = SURVEYS.map((_, i) => ({ left: `${i * third + 4}%`, width: `${third - 7}%`, top: 40, bottom: 70 }));
  return {
    tooltip: tooltip({ trigger: "item", formatter: (x) => `${categories[x.dataIndex]}: ${x.seriesName} ${SURVEYS.find((s) => s.label === x.seriesName)?.fmt(x.value)}` }),
    title: SURVEYS.map((s, i) => ({ text: s.label, left: `${i * third + 4}%`, top: 6, textStyle: { fontSize: 13, color: "#3d4757" } })),
    grid: grids,
    xAxis: SURVEYS.map((_, i) => axis({ type: "category", gridIndex: i, data: categories, axisLabel: { color: "#3d4757", interval: 0, rotate: categories.length > 4 ? 35 : 0, width: 90, overflow: "truncate" } })),
    yAxis: SURVEYS.map((s, i) => axis({ type: "value", gridIndex: i, min: s.min, max: s.max, axisLabel: { color: "#3d4757", formatter: s.key === "csat" ? (v) => pct(v) : undefined } })),
    series: SURVEYS.flatMap((s, i) => [
      { name: s.label, type: "scatter", xAxisIndex: i, yAxisIndex: i, symbolSize: 11, itemStyle: { color: s.color }, data: feelings.map((f) => value(f[s.key])), label: { show: true, position: "right", color: "#1f2937", formatter: (x) => s.fmt(x.value) } },
      intervals(`${s.label} interval`, feelings.map((f, k) => [k, f[s.key].status === "ok" ? f[s.key].ci_low : null, f[s.key].status === "ok" ? f[s.key].ci_high : null]), s.color, { xAxisIndex: i, yAxisIndex: i }),
    ]),
  };
}

/** The columns every feelings table has: each score with interval and count, and sentiment. */
const feelingColumns = [
  ...SURVEYS.map((s) => ({ key: s.key, label: s.label, num: true, value: (x) => value(x[s.key]), format: (_, x) => scoreText(x[s.key], s.fmt) })),
  ...SURVEYS.map((s) => ({ key: `${s.key}_responses`, label: `${s.label} answers`, num: true, value: (x) => x[s.key].responses, format: int })),
  { key: "sentiment", label: "Sentiment", num: true, value: (x) => (x.sentiment.status === "ok" ? x.sentiment.mean_compound : null), format: (_, x) => sentimentText(x.sentiment) },
  { key: "texts", label: "Texts", num: true, value: (x) => x.sentiment.texts, format: int },
];

export async function render(ctx) {
  const p = ctx.params;
  const by = p.get("by") || "channel";
  const interval = p.get("interval") || "week";
  const minResponses = Number(p.get("min_responses") || 30);
  const base = { min_responses: minResponses, ...common(p) };

  const controls = form(ctx, [
    field("Break down by", select([["channel", "Channel of the touch before"], ["asset", "Asset of the touch before"], ["campaign", "Campaign of the touch before"], ["stage", "Stage"]], by, { name: "by", id: "emotion-by" })),
    field("Over time by", select([["day", "Day"], ["week", "Week"], ["month", "Month"]], interval, { name: "interval", id: "emotion-interval" })),
    field("Fewest answers for a score", select([5, 10, 20, 30, 50, 100].map((n) => [n, String(n)]), minResponses, { name: "min_responses", id: "emotion-min" }), "Fewer answers say \"not enough data\" instead of a number"),
  ], { submit: "Show feelings" });

  const tiles = h("div.tiles", { "aria-live": "polite" });
  const map = card({ title: "Emotion map", description: "Persons and drop-off at each journey stage; moments of truth marked", wide: true });
  const scores = card({ title: "Scores by stage", description: "NPS (points), CSAT (share of 4-5) and CES (mean, higher is easier) with 95% intervals", wide: true });
  const sentiment = card({ title: "Sentiment by stage", description: "VADER compound score of comments and support messages, what the negative ones are about, and examples", wide: true });
  const time = card({ title: "Scores over time", description: `NPS, CSAT and CES per ${interval}, with intervals; gaps have too few answers`, wide: true, tall: true });
  const groups = card({ title: `Scores by ${by}`, description: by === "stage" ? "Each stage's scores" : `By the ${by} of the touch before each answer (the first event of the session that led to it)`, wide: true });
  ctx.main.append(header(ctx, "Emotion", "How people feel at each stage, channel and asset"), controls, tiles, grid(map, scores, sentiment, time, groups));

  const timeReq = { ...base, by: interval };
  for (const c of [scores, sentiment, time]) c.loading();
  run(map, ctx.project, "emotion", timeReq, (r, defs) => {
    const t = r.total;
    tiles.replaceChildren(
      ...SURVEYS.map((s) => h("div.tile", { "data-tile": s.key }, h("span.tile-label", `${s.label} overall`), h("span.tile-value", t[s.key].status === "ok" ? s.fmt(t[s.key].score) : "n/a"), h("span.sub", scoreText(t[s.key], s.fmt)))),
      h("div.tile", { "data-tile": "sentiment" }, h("span.tile-label", "Sentiment overall"), h("span.tile-value", t.sentiment.status === "ok" ? compound(t.sentiment.mean_compound) : "n/a"), h("span.sub", sentimentText(t.sentiment))),
    );
    const stages = r.stages;
    const names = stages.map((s) => s.stage);
    map.set({
      definitions: defs,
      json: { stages, moments_of_truth: r.moments_of_truth, methods: r.methods, stages_source: r.stages_source },
      table: {
        caption: `Stages from ${r.stages_source}; moments of truth: ${r.moments_of_truth.join(", ") || "none"}. ${int(r.invalid_answers)} answers not understood were left out.`,
        columns: [
          { key: "stage", label: "Stage", format: (v, x) => (x.moment_of_truth ? h("strong", `${v} ★`) : v) },
          { key: "persons", label: "Persons", num: true, format: int },
          { key: "drop_off", label: "Drop-off", num: true, format: pct },
          ...feelingColumns,
          { key: "flags", label: "Why it stands out", value: (x) => x.flags.join(", "), format: (v) => v || "–" },
        ],
        rows: stages,
      },
      showTable: true,
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" } }),
        legend: legend(),
        grid: { left: 56, right: 56, top: 40, bottom: 32 },
        xAxis: axis({ type: "category", data: names }),
        yAxis: [axis({ type: "value", name: "persons" }), axis({ type: "value", name: "drop-off", min: 0, max: 1, splitLine: { show: false }, axisLabel: { color: "#3d4757", formatter: (v) => pct(v) } })],
        series: [
          { name: "Persons", type: "bar", barWidth: "50%", data: stages.map((s) => ({ value: s.persons, itemStyle: { color: s.moment_of_truth ? "#d64575" : "#2456d6", borderRadius: [4, 4, 0, 0] } })), label: { show: true, position: "top", color: "#1f2937", formatter: (x) => (stages[x.dataIndex].moment_of_truth ? `${int(x.value)} ★` : int(x.value)) } },
          { name: "Drop-off", type: "line", yAxisIndex: 1, symbolSize: 8, lineStyle: { width: 2.5 }, color: "#e8743b", data: stages.map((s) => s.drop_off) },
        ],
      },
    });

    scores.set({
      definitions: defs,
      json: stages.map((s) => ({ stage: s.stage, nps: s.nps, csat: s.csat, ces: s.ces })),
      table: { columns: [{ key: "stage", label: "Stage" }, ...feelingColumns.slice(0, 6)], rows: stages },
      height: 340,
      option: scoresOption(names, stages),
    });

    const stageRows = [...stages, { stage: "(no stage)", ...r.unstaged }];
    sentiment.set({
      definitions: defs,
      json: stageRows.map((s) => ({ stage: s.stage, sentiment: s.sentiment })),
      table: {
        columns: [
          { key: "stage", label: "Stage" },
          { key: "mean_compound", label: "Mean compound", num: true, value: (x) => (x.sentiment.status === "ok" ? x.sentiment.mean_compound : null), format: (_, x) => sentimentText(x.sentiment) },
          { key: "positive", label: "Positive", num: true, value: (x) => x.sentiment.positive, format: int },
          { key: "neutral", label: "Neutral", num: true, value: (x) => x.sentiment.neutral, format: int },
          { key: "negative", label: "Negative", num: true, value: (x) => x.sentiment.negative, format: int },
          { key: "negative_terms", label: "Negative terms (lift)", value: (x) => x.sentiment.negative_terms.map((t) => `${t.term} ×${t.lift.toFixed(1)}`).join(", "), format: (v) => v || "–" },
          { key: "most_negative", label: "Most negative comment", value: (x) => x.sentiment.most_negative[0]?.text ?? "", format: (v, x) => (v ? h("q", { title: `compound ${compound(x.sentiment.most_negative[0].compound)}` }, v) : "–") },
          { key: "most_positive", label: "Most positive comment", value: (x) => x.sentiment.most_positive[0]?.text ?? "", format: (v, x) => (v ? h("q", { title: `compound ${compound(x.sentiment.most_positive[0].compound)}` }, v) : "–") },
        ],
        rows: stageRows,
      },
      showTable: true,
      height: 260,
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" } }),
        grid: { left: 56, right: 24, top: 24, bottom: 32 },
        xAxis: axis({ type: "category", data: stageRows.map((s) => s.stage) }),
        yAxis: axis({ type: "value", min: -1, max: 1 }),
        series: [
          { name: "Mean compound", type: "bar", barWidth: "45%", data: stageRows.map((s) => (s.sentiment.status === "ok" ? s.sentiment.mean_compound : null)), itemStyle: { color: "#9b51e0" } },
          intervals("Sentiment interval", stageRows.map((s, k) => [k, s.sentiment.status === "ok" ? s.sentiment.ci_low : null, s.sentiment.status === "ok" ? s.sentiment.ci_high : null]), "#4a2a78"),
        ],
      },
    });

    const keys = r.groups.map((g) => g.key);
    const rows = SURVEYS.length;
    time.set({
      definitions: defs,
      json: r.groups,
      table: { columns: [{ key: "key", label: interval[0].toUpperCase() + interval.slice(1) }, ...feelingColumns], rows: r.groups },
      height: 520,
      option: {
        tooltip: tooltip(),
        title: SURVEYS.map((s, i) => ({ text: s.label, left: 8, top: `${(i * 100) / rows + 1}%`, textStyle: { fontSize: 12, color: "#3d4757" } })),
        grid: SURVEYS.map((_, i) => ({ left: 64, right: 24, top: `${(i * 100) / rows + 5}%`, height: `${100 / rows - 12}%` })),
        xAxis: SURVEYS.map((_, i) => axis({ type: "category", gridIndex: i, data: keys, axisLabel: { color: "#3d4757", show: i === rows - 1 } })),
        yAxis: SURVEYS.map((s, i) => axis({ type: "value", gridIndex: i, min: s.min, max: s.max, axisLabel: { color: "#3d4757", formatter: s.key === "csat" ? (v) => pct(v) : undefined } })),
        series: SURVEYS.flatMap((s, i) => [
          { name: s.label, type: "line", xAxisIndex: i, yAxisIndex: i, connectNulls: false, symbolSize: 7, color: s.color, data: r.groups.map((g) => value(g[s.key])) },
          intervals(`${s.label} interval`, r.groups.map((g, k) => [k, g[s.key].status === "ok" ? g[s.key].ci_low : null, g[s.key].status === "ok" ? g[s.key].ci_high : null]), s.color, { xAxisIndex: i, yAxisIndex: i }),
        ]),
      },
    });
  }).then((r) => {
    if (!r) for (const c of [scores, sentiment, time]) c.error("The emotion query failed: see the emotion map above.");
  });

  run(groups, ctx.project, "emotion", { ...base, by }, (r, defs) => {
    const shown = r.groups.slice(0, GROUPS_SHOWN);
    groups.set({
      definitions: defs,
      json: r.groups,
      table: {
        caption: `${int(r.groups.length)} ${by} values, most answers first${r.omitted_groups ? `; ${int(r.omitted_groups)} more omitted` : ""}; the chart shows the first ${Math.min(GROUPS_SHOWN, r.groups.length)}`,
        columns: [{ key: "key", label: by[0].toUpperCase() + by.slice(1) }, ...feelingColumns],
        rows: r.groups,
      },
      showTable: true,
      height: 360,
      option: scoresOption(shown.map((g) => g.key), shown),
    });
  });
}
