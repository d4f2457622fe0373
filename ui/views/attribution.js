// Attribution: every model side by side, per channel and per asset, with the path table
// the models read (`"model": "all"`, `"paths": N`).

import { h, field, select } from "../lib/dom.js";
import { card } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults } from "../lib/defaults.js";
import { header, run, grid, axis, tooltip, legend } from "../lib/view.js";
import { int, num, money } from "../lib/format.js";

const MODEL_LABELS = {
  first_touch: "First touch", last_touch: "Last touch", last_non_direct: "Last non-direct", linear: "Linear",
  time_decay: "Time decay", position_based: "Position based", markov: "Markov", shapley: "Shapley",
};
const KEYS_MAX = 12;

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const p = ctx.params;
  const conversion = p.get("conversion") || d.conversion;
  const lookback = p.get("lookback") || "30d";
  const value = p.has("value") ? p.get("value") : d.value || "";
  const paths = Number(p.get("paths") || 15);
  const base = { conversion, model: "all", lookback, ...(value ? { value } : {}), ...common(p) };

  const controls = form(ctx, [
    field("Conversion", h("input", { type: "text", name: "conversion", id: "attribution-conversion", value: conversion, list: "attribution-names", required: true, autocomplete: "off" })),
    h("datalist", { id: "attribution-names" }, d.names.map((n) => h("option", { value: n }))),
    field("Lookback", select([["7d", "7 days"], ["30d", "30 days"], ["90d", "90 days"]], lookback, { name: "lookback", id: "attribution-lookback" })),
    field("Value property", h("input", { type: "text", name: "value", id: "attribution-value", value, placeholder: "e.g. revenue", autocomplete: "off" }), "A numeric property of the conversion event, summed per row"),
    field("Paths listed", select([10, 15, 50, 100].map((n) => [n, String(n)]), paths, { name: "paths", id: "attribution-paths" })),
  ], { submit: "Compare models" });

  const byChannel = card({ title: "Conversions by channel, every model", description: "Credit each model gives each channel", wide: true, tall: true });
  const byAsset = card({ title: "Conversions by asset, every model", description: `The ${KEYS_MAX} assets with the most last-touch credit`, wide: true, tall: true });
  const table = card({ title: "Path table", description: "The journeys the models read: channel paths with conversions, value and non-converting journeys", wide: true });
  ctx.main.append(header(ctx, "Attribution", `Credit for ${conversion}, model by model`), controls, grid(byChannel, byAsset, table));

  const show = (target) => (r, defs) => {
    const models = r.models || [];
    const ranking = models.find((m) => m.model === "last_touch") || models[0];
    const keys = (ranking?.rows || []).map((x) => x.key).slice(0, KEYS_MAX);
    for (const m of models) for (const x of m.rows) if (keys.length < KEYS_MAX && !keys.includes(x.key)) keys.push(x.key);
    const at = (m, k) => m.rows.find((x) => x.key === k);
    const columns = [{ key: "key", label: r.by }, ...models.map((m) => ({ label: MODEL_LABELS[m.model] || m.model, num: true, value: (k) => at(m, k)?.conversions ?? 0, format: num }))];
    if (value) columns.push({ label: "Value (linear)", num: true, value: (k) => at(models.find((m) => m.model === "linear") || models[0], k)?.value ?? 0, format: money });
    const shown = [...keys].reverse();
    target.set({
      definitions: defs,
      json: r,
      table: { columns: columns.map((c, i) => (i === 0 ? { ...c, value: (k) => k } : c)), rows: keys },
      height: Math.max(360, shown.length * 44 + 60),
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" }, valueFormatter: (v) => num(v) }),
        legend: legend({ type: "scroll" }),
        grid: { left: 150, right: 24, top: 40, bottom: 24 },
        xAxis: axis({ type: "value" }),
        yAxis: axis({ type: "category", data: shown, axisLabel: { color: "#3d4757", width: 140, overflow: "truncate" } }),
        series: models.map((m) => ({ name: MODEL_LABELS[m.model] || m.model, type: "bar", barGap: "8%", data: shown.map((k) => at(m, k)?.conversions ?? 0) })),
      },
    });
    return r;
  };

  run(byChannel, ctx.project, "attribution", { ...base, by: "channel", paths }, (r, defs) => {
    show(byChannel)(r, defs);
    const rows = r.paths || [];
    table.set({
      definitions: defs,
      json: rows,
      table: {
        caption: `${int(r.journeys)} converting and ${int(r.null_journeys)} non-converting journeys, ${int(r.distinct_paths)} distinct paths; ${int(r.unattributed_conversions)} conversions had no session in the lookback`,
        columns: [
          { key: "path", label: "Path", value: (x) => x.path.join(" › ") },
          { key: "conversions", label: "Conversions", num: true, format: num },
          { key: "value", label: "Value", num: true, format: money },
          { key: "nulls", label: "Not converted", num: true, format: num },
        ],
        rows,
      },
    });
  });
  run(byAsset, ctx.project, "attribution", { ...base, by: "asset" }, show(byAsset));
}
