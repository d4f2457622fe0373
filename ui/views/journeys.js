// Journeys: the paths people take, as a Sankey diagram and a ranked table: channel
// journeys (each session's channel up to the conversion) or pages and events before it.

import { h, field, select } from "../lib/dom.js";
import { card } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults } from "../lib/defaults.js";
import { header, run, grid } from "../lib/view.js";
import { int, pct } from "../lib/format.js";

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const p = ctx.params;
  const of = p.get("of") || "channels";
  const conversion = p.get("conversion") || d.conversion;
  const depth = Number(p.get("depth") || 4);
  const limit = Number(p.get("limit") || 50);
  const req = of === "channels"
    ? { of: "channels", conversion, depth, limit, ...common(p) }
    : { of: "events", end: conversion, depth, limit, ...common(p) };

  const controls = form(ctx, [
    field("Journeys of", select([["channels", "Channels (one touch per session)"], ["events", "Pages and events before the conversion"]], of, { name: "of", id: "journeys-of" })),
    field("Conversion", h("input", { type: "text", name: "conversion", id: "journeys-conversion", value: conversion, list: "journeys-names", required: true, autocomplete: "off" })),
    h("datalist", { id: "journeys-names" }, d.names.map((n) => h("option", { value: n }))),
    field("Steps shown", select([3, 4, 5, 6, 8].map((n) => [n, String(n)]), depth, { name: "depth", id: "journeys-depth" })),
    field("Top paths", select([10, 20, 50, 100].map((n) => [n, String(n)]), limit, { name: "limit", id: "journeys-limit" })),
  ], { submit: "Show journeys" });

  const sankey = card({ title: "Journey flow", description: of === "channels" ? `Channels of each person's sessions, up to ${conversion} for those who converted` : `The last ${depth} pages and events up to ${conversion}`, wide: true, tall: true });
  const top = card({ title: "Top paths", description: "The most frequent paths; the flow above draws these", wide: true });
  ctx.main.append(header(ctx, "Journeys", of === "channels" ? "Channel journeys to a conversion" : "Pages and events to a conversion"), controls, grid(sankey, top));

  run(sankey, ctx.project, "paths", req, (r, defs) => {
    const label = new Map(r.nodes.map((n) => [n.id, n.label]));
    const short = (s) => s.replace(/^page:/, "");
    sankey.set({
      definitions: defs,
      json: { nodes: r.nodes, links: r.links },
      table: {
        columns: [{ key: "source", label: "From", value: (l) => label.get(l.source) }, { key: "target", label: "To", value: (l) => label.get(l.target) }, { key: "persons", label: "Persons", num: true, format: int }],
        rows: r.links,
      },
      height: 520,
      option: r.nodes.length
        ? {
          tooltip: { trigger: "item", confine: true, formatter: (x) => (x.dataType === "edge" ? `${short(label.get(x.data.source))} → ${short(label.get(x.data.target))}: ${int(x.data.value)}` : `${short(label.get(x.name))}: ${int(x.value)}`) },
          series: [{
            type: "sankey",
            left: 8, right: 140, top: 16, bottom: 16,
            nodeGap: 10, nodeWidth: 14, layoutIterations: 32,
            emphasis: { focus: "adjacency" },
            lineStyle: { color: "gradient", opacity: 0.35, curveness: 0.5 },
            label: { color: "#1f2937", fontSize: 12, formatter: (x) => short(label.get(x.name)) },
            data: r.nodes.map((n) => ({ name: n.id, value: n.persons, depth: n.step })),
            links: r.links.map((l) => ({ source: l.source, target: l.target, value: l.persons })),
          }],
        }
        : { title: { text: "No journeys in this range", left: "center", top: "middle", textStyle: { color: "#3d4757", fontSize: 14 } } },
    });
    const columns = [
      { key: "path", label: "Path", value: (x) => x.path.map(short).join(" › ") },
      { key: "persons", label: "Persons", num: true, format: int },
    ];
    if (of === "channels") {
      columns.push(
        { key: "conversions", label: "Converted", num: true, format: int },
        { key: "nulls", label: "Not converted", num: true, format: int },
      );
    }
    top.set({ definitions: defs, json: r.paths, table: { columns, rows: r.paths, caption: `${int(r.persons)} persons` } });
  });
}
