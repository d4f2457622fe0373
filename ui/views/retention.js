// Retention: cohorts by the period of each person's first start event, and the share who
// came back with the return event in each following period, as a heatmap.

import { h, field, select } from "../lib/dom.js";
import { card } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults } from "../lib/defaults.js";
import { header, run, grid, axis } from "../lib/view.js";
import { int, pct } from "../lib/format.js";

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const p = ctx.params;
  const start = p.get("start") || d.retention.start;
  const ret = p.get("return") || d.retention.ret;
  const period = p.get("period") || "week";
  const periods = Number(p.get("periods") || 8);
  const req = { start, return: ret, period, periods, ...common(p) };

  const controls = form(ctx, [
    field("Cohort event", h("input", { type: "text", name: "start", id: "retention-start", value: start, list: "retention-names", required: true, autocomplete: "off" })),
    field("Return event", h("input", { type: "text", name: "return", id: "retention-return", value: ret, list: "retention-names", required: true, autocomplete: "off" })),
    h("datalist", { id: "retention-names" }, d.names.map((n) => h("option", { value: n }))),
    field("Period", select([["day", "Day"], ["week", "Week"], ["month", "Month"]], period, { name: "period", id: "retention-period" })),
    field("Periods", select([4, 8, 12, 16, 26].map((n) => [n, String(n)]), periods, { name: "periods", id: "retention-periods" })),
  ], { submit: "Show cohorts" });

  const heat = card({ title: "Retention cohorts", description: `Share of each ${period}'s cohort (first ${start}) doing ${ret} in each following ${period}`, wide: true, tall: true });
  ctx.main.append(header(ctx, "Retention", `${start} → ${ret}`), controls, grid(heat));

  run(heat, ctx.project, "retention", req, (r, defs) => {
    const cohorts = r.cohorts;
    const cols = Array.from({ length: periods + 1 }, (_, i) => `${period} ${i}`);
    const yLabels = cohorts.map((c) => `${c.cohort} (${int(c.size)})`).reverse();
    const data = [];
    cohorts.forEach((c, row) => {
      c.share.forEach((s, i) => data.push({ value: [i, cohorts.length - 1 - row, s, c.returning[i]], label: { color: s > 0.45 ? "#ffffff" : "#10182b" } }));
    });
    heat.set({
      definitions: defs,
      json: r,
      table: {
        columns: [
          { key: "cohort", label: "Cohort" },
          { key: "size", label: "Persons", num: true, format: int },
          ...cols.map((c, i) => ({ label: c, num: true, value: (x) => x.share[i], format: pct })),
        ],
        rows: cohorts,
      },
      height: Math.max(320, cohorts.length * 30 + 90),
      option: {
        tooltip: { trigger: "item", confine: true, formatter: (x) => `${yLabels[x.value[1]]}, ${cols[x.value[0]]}: ${pct(x.value[2])} (${int(x.value[3])} persons)` },
        grid: { left: 150, right: 24, top: 16, bottom: 72 },
        xAxis: axis({ type: "category", data: cols, splitArea: { show: false } }),
        yAxis: axis({ type: "category", data: yLabels }),
        visualMap: { dimension: 2, min: 0, max: 1, calculable: false, orient: "horizontal", left: "center", bottom: 8, itemWidth: 12, itemHeight: 160, inRange: { color: ["#f3f6fc", "#9db7f5", "#2456d6", "#132f73"] }, formatter: (v) => pct(v), textStyle: { color: "#3d4757" } },
        series: [{
          type: "heatmap",
          data,
          label: { show: true, formatter: (x) => pct(x.value[2]), fontSize: 11 },
          itemStyle: { borderColor: "#fff", borderWidth: 2 },
          emphasis: { itemStyle: { borderColor: "#10182b", borderWidth: 1 } },
        }],
      },
    });
  });
}
