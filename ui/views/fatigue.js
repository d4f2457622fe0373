// Fatigue: when it is too much (`query fatigue`). Per channel the response curve
// (unsubscribe and conversion rate against touches per window, with intervals), the
// recommended cap beside the cap the orchestration config sets (the server fills it in and
// says where it came from), and the persons showing fatigue now, exportable as a journey
// suppression list.

import { h, field, fill, toast } from "../lib/dom.js";
import { query, definition } from "../lib/api.js";
import { card, toCsv, renderTable } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults } from "../lib/defaults.js";
import { href } from "../lib/route.js";
import { header, run, grid, axis, tooltip, legend, intervals } from "../lib/view.js";
import { int, num, pct } from "../lib/format.js";

const AUDIENCE_SHOWN = 1000;
const AUDIENCE_MAX = 1_000_000;
const capText = (v) => (v === null || v === undefined ? "–" : `${int(v)} per window`);

/** The suppression list, as `query fatigue --audience-out FILE.csv` writes it. */
const EXPORT_COLUMNS = [
  { key: "person_id", label: "person_id" },
  { key: "user_ids", label: "user_ids", value: (r) => r.user_ids.join(";") },
  { key: "emails", label: "emails", value: (r) => r.emails.join(";") },
  { key: "anonymous_ids", label: "anonymous_ids", value: (r) => r.anonymous_ids.join(";") },
  { key: "channel", label: "channel" },
  { key: "touches_last_window", label: "touches_last_window" },
  { key: "cap", label: "cap" },
  { key: "engagement_recent", label: "engagement_recent", value: (r) => r.engagement_recent.toFixed(4) },
  { key: "engagement_before", label: "engagement_before", value: (r) => r.engagement_before.toFixed(4) },
];

function download(name, text) {
  const a = h("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const p = ctx.params;
  const conversion = p.get("conversion") || d.conversion;
  const value = Number(p.get("value") || 1);
  const cost = Number(p.get("cost") || 10);
  const window = p.get("window") || "7d";
  const minWindows = Number(p.get("min_windows") || 100);
  const req = { conversion, conversion_value: value, unsubscribe_cost: cost, window, min_windows: minWindows, audience_limit: AUDIENCE_SHOWN, ...common(p) };

  const number = (name, v, label, hint) => field(label, h("input", { type: "text", inputmode: "decimal", name, id: `fatigue-${name}`, value: String(v), autocomplete: "off", required: true }), hint);
  const controls = form(ctx, [
    field("Conversion", h("input", { type: "text", name: "conversion", id: "fatigue-conversion", value: conversion, list: "fatigue-names", required: true, autocomplete: "off" })),
    h("datalist", { id: "fatigue-names" }, d.names.map((n) => h("option", { value: n }))),
    number("value", value, "Value of a conversion"),
    number("cost", cost, "Cost of an unsubscribe", "The future value a lost subscriber takes away"),
    field("Window", h("input", { type: "text", name: "window", id: "fatigue-window", value: window, autocomplete: "off", required: true }), "Touches are counted per window, e.g. 7d"),
    number("min_windows", minWindows, "Fewest windows per point", "Touch counts seen in fewer windows do not inform the recommendation"),
  ], { submit: "Find the caps" });

  const caps = card({ title: "Recommended and configured caps", description: "Per channel: the touches per window past which marginal unsubscribes cost more than marginal conversions bring, beside the cap the orchestration config sets", wide: true });
  const curves = h("div.grid.curves");
  const audience = card({ title: "Fatigued now", description: "Persons over the cap whose engagement is falling: load them as a journey suppression list", wide: true });
  ctx.main.append(header(ctx, "Fatigue", `When it is too much: touches against unsubscribes and ${conversion}`), controls, grid(caps), curves, grid(audience));
  audience.loading();

  const answer = await run(caps, ctx.project, "fatigue", req, (r, defs) => {
    const rows = r.channels;
    caps.set({
      definitions: defs,
      json: rows.map(({ curve, ...rest }) => rest),
      table: {
        caption: `Windows of ${num(r.window_seconds / 86400)} days; a conversion is worth ${num(r.conversion_value)}, an unsubscribe costs ${num(r.unsubscribe_cost)}, a complaint ${num(r.complaint_cost)}.`,
        columns: [
          { key: "channel", label: "Channel" },
          { key: "persons", label: "Persons", num: true, format: int },
          { key: "windows", label: "Windows", num: true, format: int },
          { key: "touches", label: "Touches", num: true, format: int },
          { key: "unsubscribes", label: "Unsubscribes", num: true, format: int },
          { key: "complaints", label: "Complaints", num: true, format: int },
          { key: "recommended_cap", label: "Recommended cap", num: true, format: (v, x) => (v === null ? x.status : capText(v)) },
          { key: "configured_cap", label: "Configured cap", num: true, format: capText },
          { key: "configured_cap_source", label: "Configured by", value: (x) => x.configured_cap_source?.detail ?? "", format: (v, x) => (x.configured_cap_source ? h("span", { title: v }, x.configured_cap_source.from === "orchestration" ? `orchestration: ${x.configured_cap_source.caps.join(", ")}` : "this request") : "no cap configured") },
          { key: "cap_advice", label: "Advice" },
          { key: "persons_over_cap_now", label: "Over the cap now", num: true, format: int },
        ],
        rows,
      },
      showTable: true,
      height: Math.max(200, rows.length * 56 + 60),
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" } }),
        legend: legend(),
        grid: { left: 80, right: 40, top: 36, bottom: 24 },
        xAxis: axis({ type: "value", name: "touches per window", nameLocation: "middle", nameGap: 24, minInterval: 1 }),
        yAxis: axis({ type: "category", data: rows.map((x) => x.channel) }),
        series: [
          { name: "Recommended cap", type: "bar", data: rows.map((x) => x.recommended_cap), itemStyle: { color: "#19a979" }, label: { show: true, position: "right", color: "#1f2937" } },
          { name: "Configured cap", type: "bar", data: rows.map((x) => x.configured_cap), itemStyle: { color: "#5a6b85" }, label: { show: true, position: "right", color: "#1f2937" } },
        ],
      },
    });

    for (const ch of rows) {
      const c = card({ title: `Response curve: ${ch.channel}`, description: `Unsubscribe and conversion rate by touches per window (${int(ch.windows)} windows of ${int(ch.persons)} persons), with 95% intervals`, wide: rows.length === 1 });
      curves.append(c.el);
      const labels = ch.curve.map((x, i) => (i === ch.curve.length - 1 && ch.curve.length > 1 ? `${x.touches}+` : String(x.touches)));
      const at = (cap) => ch.curve.findIndex((x) => x.touches === cap);
      const marks = [];
      if (ch.recommended_cap !== null && at(ch.recommended_cap) >= 0) marks.push({ xAxis: labels[at(ch.recommended_cap)], name: "recommended", label: { formatter: `recommended ${ch.recommended_cap}`, color: "#0c6b4c" }, lineStyle: { color: "#19a979", type: "solid", width: 2 } });
      if (ch.configured_cap !== null && at(ch.configured_cap) >= 0) marks.push({ xAxis: labels[at(ch.configured_cap)], name: "configured", label: { formatter: `configured ${ch.configured_cap}`, color: "#3d4757", position: "insideEndTop" }, lineStyle: { color: "#5a6b85", type: "dashed", width: 2 } });
      c.set({
        definitions: [definition(ctx.project, "fatigue", req)],
        json: ch,
        table: {
          caption: ch.cap_advice,
          columns: [
            { key: "touches", label: "Touches" },
            { key: "windows", label: "Windows", num: true, format: int },
            { key: "opt_out", label: "Opt-out", num: true, value: (x) => x.opt_out.rate, format: (v, x) => `${pct(v)} [${pct(x.opt_out.ci_low)}–${pct(x.opt_out.ci_high)}]` },
            { key: "conversion", label: "Conversion", num: true, value: (x) => x.conversion.rate, format: (v, x) => `${pct(v)} [${pct(x.conversion.ci_low)}–${pct(x.conversion.ci_high)}]` },
            { key: "engagement_per_touch", label: "Engaged per touch", num: true, format: (v) => (v === null ? "–" : v.toFixed(2)) },
            { key: "net_value", label: "Net value", num: true, format: (v) => (v === null ? "–" : v.toFixed(4)) },
          ],
          rows: ch.curve,
        },
        height: 320,
        option: {
          tooltip: tooltip({ valueFormatter: (v) => pct(v) }),
          legend: legend({ data: ["Opt-out rate", "Conversion rate", "Windows"] }),
          grid: { left: 56, right: 56, top: 40, bottom: 40 },
          xAxis: axis({ type: "category", data: labels, name: "touches per window", nameLocation: "middle", nameGap: 26 }),
          yAxis: [axis({ type: "value", axisLabel: { color: "#3d4757", formatter: (v) => pct(v) } }), axis({ type: "value", name: "windows", splitLine: { show: false } })],
          series: [
            { name: "Windows", type: "bar", yAxisIndex: 1, data: ch.curve.map((x) => x.windows), itemStyle: { color: "#e3e9f6" }, tooltip: { valueFormatter: int } },
            { name: "Opt-out rate", type: "line", symbolSize: 7, color: "#d64575", data: ch.curve.map((x) => x.opt_out.rate), markLine: marks.length ? { symbol: "none", data: marks, silent: true } : undefined },
            intervals("Opt-out interval", ch.curve.map((x, k) => [k, x.opt_out.ci_low, x.opt_out.ci_high]), "#d64575"),
            { name: "Conversion rate", type: "line", symbolSize: 7, color: "#19a979", data: ch.curve.map((x) => x.conversion.rate) },
            intervals("Conversion interval", ch.curve.map((x, k) => [k, x.conversion.ci_low, x.conversion.ci_high]), "#19a979"),
          ],
        },
      });
    }
  });
  if (!answer) {
    audience.error("The fatigue query failed: see above.");
    return;
  }

  const a = answer.audience;
  const exportButton = h("button.ghost.small", { type: "button", id: "fatigue-export", onclick: exportAll }, `Export the suppression list (${int(a.rows_total)} rows, CSV)`);
  async function exportAll() {
    let rows = a.rows;
    if (a.rows_total > rows.length) {
      try {
        rows = (await query(ctx.project, "fatigue", { ...req, audience_limit: Math.min(a.rows_total, AUDIENCE_MAX) })).audience.rows;
      } catch (e) {
        return toast(`Export failed: ${e.message}`);
      }
    }
    download(`fatigued-${ctx.project}.csv`, toCsv({ columns: EXPORT_COLUMNS, rows }));
    toast(`Exported ${int(rows.length)} rows: import them with throughline suppressions import`);
  }
  const columns = [
    { key: "person_id", label: "Person", format: (v) => h("a", { href: href(ctx.project, "person", { id: v }) }, v) },
    { key: "channel", label: "Channel" },
    { key: "touches_last_window", label: "Touches in the last window", num: true, format: int },
    { key: "cap", label: "Cap", num: true, format: int },
    { key: "engagement_recent", label: "Engaged per touch, last 14 days", num: true, format: (v) => v.toFixed(2) },
    { key: "engagement_before", label: "… the 28 days before", num: true, format: (v) => v.toFixed(2) },
    { key: "emails", label: "E-mails", value: (x) => x.emails.join("; ") },
    { key: "user_ids", label: "User ids", value: (x) => x.user_ids.join("; ") },
  ];
  const body = h("div");
  audience.set({
    definitions: [definition(ctx.project, "fatigue", req)],
    json: a,
    table: { columns, rows: a.rows },
    content: body,
  });
  fill(
    body,
    h("p.live", { id: "fatigue-audience-count" }, h("strong", `${int(a.persons)} persons`), ` showing fatigue now (${int(a.rows_total)} rows: a person per channel), as of ${answer.now}. `, a.definition),
    h("div.row-actions", exportButton),
    a.rows.length ? renderTable({ columns, rows: a.rows, caption: a.omitted_rows ? `The first ${int(a.rows.length)} rows; the export has all ${int(a.rows_total)}` : null }) : h("p.empty", "Nobody shows fatigue now."),
  );
}
