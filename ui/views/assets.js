// Assets: one scorecard row per asset (ad, email, post, landing page), sortable, with a
// sparkline of its conversions per week from the same answer (`"interval": "week"`).

import { h, field, select, fill } from "../lib/dom.js";
import { card } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults } from "../lib/defaults.js";
import { header, run, grid } from "../lib/view.js";
import { int, pct, money, seconds } from "../lib/format.js";

const SVG = "http://www.w3.org/2000/svg";

/** A sparkline of a series as an SVG polyline, labelled with its total and peak. */
function sparkline(series, label) {
  const w = 120;
  const hgt = 28;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  if (!series || series.length === 0) return svg;
  const max = Math.max(1, ...series);
  const step = series.length > 1 ? w / (series.length - 1) : w;
  const pts = series.map((v, i) => `${(i * step).toFixed(1)},${(hgt - 2 - (v / max) * (hgt - 4)).toFixed(1)}`);
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute("points", `0,${hgt} ${pts.join(" ")} ${((series.length - 1) * step).toFixed(1)},${hgt}`);
  area.setAttribute("class", "spark-area");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("class", "spark-line");
  svg.append(area, line);
  return svg;
}

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const p = ctx.params;
  const conversion = p.get("conversion") || d.conversion;
  const window = p.get("window") || "7d";
  const value = p.has("value") ? p.get("value") : d.value || "";
  const limit = Number(p.get("limit") || 50);
  const sort = p.get("sort") || "sessions";
  const dir = p.get("dir") === "asc" ? "asc" : "desc";
  const req = { conversion, window, limit, interval: "week", ...(value ? { value } : {}), ...common(p) };

  const controls = form(ctx, [
    field("Conversion", h("input", { type: "text", name: "conversion", id: "assets-conversion", value: conversion, list: "assets-names", required: true, autocomplete: "off" })),
    h("datalist", { id: "assets-names" }, d.names.map((n) => h("option", { value: n }))),
    field("Window after a session", select([["1d", "1 day"], ["7d", "7 days"], ["30d", "30 days"]], window, { name: "window", id: "assets-window" })),
    field("Revenue property", h("input", { type: "text", name: "value", id: "assets-value", value, placeholder: "e.g. revenue", autocomplete: "off" }), "A numeric property of the conversion event, summed per row"),
    field("Rows", select([25, 50, 100, 500].map((n) => [n, String(n)]), limit, { name: "limit", id: "assets-limit" })),
  ], { submit: "Score assets" });

  const scores = card({ title: "Asset scorecard", description: `Each asset's sessions, engagement and ${conversion} conversions (credited last-touch within ${window})`, wide: true });
  ctx.main.append(header(ctx, "Assets", "How each ad, email, post and page does its own job"), controls, grid(scores));

  run(scores, ctx.project, "assets", req, (r, defs) => {
    const first = r.intervals?.[0];
    const last = r.intervals?.[r.intervals.length - 1];
    const columns = [
      { key: "asset", label: "Asset", sort: "text", format: (v, x) => h("span.asset", h("strong", x.name || v), x.name ? h("span.sub", v) : x.registered ? null : h("span.sub", `by ${x.keyed_by}`)) },
      { key: "kind", label: "Kind", sort: "text", format: (v) => v || "–" },
      { key: "channel", label: "Channel", sort: "text", format: (v) => v || "–" },
      { key: "sessions", label: "Sessions", num: true, format: int },
      { key: "persons", label: "Persons", num: true, format: int },
      { key: "bounce_rate", label: "Bounce", num: true, format: pct },
      { key: "avg_engaged_seconds", label: "Engaged time", num: true, format: seconds },
      { key: "conversion_rate", label: "Converting", num: true, format: pct },
      { key: "conversions", label: "Conversions", num: true, format: int },
    ];
    if (value) columns.push({ key: "revenue", label: "Revenue", num: true, format: money });
    columns.push({ key: "conversions_by_interval", label: "Weekly conversions", nosort: true, format: (s, x) => sparkline(s, `${x.name || x.asset}: weekly conversions from ${first} to ${last}`) });

    const wrap = h("div.table-wrap");
    const draw = (key, direction) => {
      const col = columns.find((c) => c.key === key) || columns[3];
      const rows = [...r.rows].sort((a, b) => {
        const va = a[col.key];
        const vb = b[col.key];
        const c = col.sort === "text" ? String(va ?? "").localeCompare(String(vb ?? "")) : (va ?? -Infinity) - (vb ?? -Infinity);
        return direction === "asc" ? c : -c;
      });
      const th = (c) => {
        if (c.nosort) return h("th", { scope: "col" }, c.label);
        const active = c.key === col.key;
        const next = active && direction === "desc" ? "asc" : "desc";
        return h(
          "th",
          { scope: "col", class: c.num ? "num" : null, "aria-sort": active ? (direction === "asc" ? "ascending" : "descending") : "none" },
          h("button.sort", { type: "button", id: `assets-sort-${c.key}`, onclick: () => sortBy(c.key, next) }, c.label, h("span.arrow", { "aria-hidden": "true" }, active ? (direction === "asc" ? " ▲" : " ▼") : "")),
        );
      };
      fill(
        wrap,
        h(
          "table.scorecard",
          h("caption", `${int(r.rows.length)} assets shown (${int(r.omitted_rows)} more with ${int(r.omitted_sessions)} sessions omitted); ${int(r.total.conversion_events)} conversions, ${int(r.total.unattributed_conversions)} without a session in the window`),
          h("thead", h("tr", columns.map(th))),
          h("tbody", rows.map((x) => h("tr", columns.map((c) => h("td", { class: c.num ? "num" : null }, c.format ? c.format(x[c.key], x) : x[c.key] ?? "–"))))),
        ),
      );
    };
    const sortBy = (key, direction) => {
      const params = new URLSearchParams(ctx.params);
      params.set("sort", key);
      params.set("dir", direction);
      history.replaceState(null, "", `#/${encodeURIComponent(ctx.project)}/assets?${params}`);
      draw(key, direction);
      document.getElementById(`assets-sort-${key}`)?.focus();
    };
    draw(sort, dir);
    scores.set({
      definitions: defs,
      json: r,
      table: { columns: columns.map((c) => (c.key === "conversions_by_interval" ? { ...c, value: (x) => (x.conversions_by_interval || []).join(" ") } : c)), rows: r.rows },
      content: wrap,
    });
  });
}
