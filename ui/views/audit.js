// Audit: where the journey breaks (`query audit`). Every finding with the traffic it
// affects, sortable: UTM spellings, unknown mediums left in Unassigned, campaigns without
// a registered asset, assets without traffic, ad/email copy that does not match its
// landing page (with matched and mismatched bounce and conversion side by side), and
// tracked links landing on an error.

import { h, field, select } from "../lib/dom.js";
import { card } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults } from "../lib/defaults.js";
import { sortable } from "../lib/sortable.js";
import { header, run, grid, axis, tooltip, legend } from "../lib/view.js";
import { int, pct } from "../lib/format.js";

const KIND_LABELS = {
  source_spelling: "Source spellings",
  medium_spelling: "Medium spellings",
  campaign_spelling: "Campaign spellings",
  unassigned_traffic: "Unassigned traffic",
  campaign_without_asset: "Campaigns without an asset",
  asset_without_traffic: "Assets without traffic",
  message_mismatch: "Message mismatches",
  error_landing: "Error landings",
};
const SEVERITY_RANK = { error: 3, warning: 2, info: 1 };

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const p = ctx.params;
  const conversion = p.get("conversion") || d.conversion;
  const window = p.get("window") || "7d";
  const similarity = Number(p.get("similarity") || 0.1);
  const req = { conversion, window, similarity_min: similarity, ...common(p) };

  const controls = form(ctx, [
    field("Conversion", h("input", { type: "text", name: "conversion", id: "audit-conversion", value: conversion, list: "audit-names", required: true, autocomplete: "off" })),
    h("datalist", { id: "audit-names" }, d.names.map((n) => h("option", { value: n }))),
    field("Window after a session", select([["1d", "1 day"], ["7d", "7 days"], ["30d", "30 days"]], window, { name: "window", id: "audit-window" })),
    field("Least similarity of a match", select([0.05, 0.1, 0.15, 0.2, 0.3].map((n) => [n, String(n)]), similarity, { name: "similarity", id: "audit-similarity" }), "Ad or e-mail copy less similar to its landing page is flagged"),
  ], { submit: "Audit" });

  const tiles = h("div.tiles", { "aria-live": "polite" });
  const findings = card({ title: "Findings", description: "Everything the audit found, with the sessions and persons it affects; sort by any column", wide: true });
  const kinds = card({ title: "Findings by kind", description: "How many of each kind (all of them, also past the listing limit)" });
  const match = card({ title: "Message match", description: "Bounce and conversion of sessions whose ad or e-mail matches its landing page, against those that do not" });
  const pairs = card({ title: "Asset and landing page pairs", description: "TF-IDF similarity of each registered asset's headline and copy with the landing pages its sessions reached", wide: true });
  const spellings = card({ title: "UTM spellings", description: "One source, medium or campaign written several ways: reports split it" });
  const unassigned = card({ title: "Unassigned traffic", description: "Sessions no channel rule matches, by source / medium" });
  const campaigns = card({ title: "Campaigns without an asset", description: "utm_campaign values with traffic and no registered asset" });
  const idle = card({ title: "Assets without traffic", description: "Registered assets that received no session in range" });
  const errors = card({ title: "Error landings", description: "Sessions from a tracked link (UTM tags, a click id, or a click on /r/…) that hit an error event on landing", wide: true });
  ctx.main.append(
    header(ctx, "Audit", "Where the journey breaks: hygiene, consistency and broken landings"),
    controls,
    tiles,
    grid(findings, kinds, match, pairs, spellings, unassigned, campaigns, idle, errors),
  );
  const others = [kinds, match, pairs, spellings, unassigned, campaigns, idle, errors];
  for (const c of others) c.loading();

  const r = await run(findings, ctx.project, "audit", req, (r, defs) => {
    const columns = [
      { key: "severity", label: "Severity", value: (x) => SEVERITY_RANK[x.severity] ?? 0, format: (_, x) => h(`span.sev.sev-${x.severity}`, x.severity) },
      { key: "kind", label: "Kind", text: true, format: (v) => KIND_LABELS[v] || v },
      { key: "subject", label: "Subject", text: true },
      { key: "detail", label: "Detail", text: true },
      { key: "affected_sessions", label: "Sessions affected", num: true, format: int },
      { key: "affected_persons", label: "Persons affected", num: true, format: int },
    ];
    findings.set({
      definitions: defs,
      json: r.findings,
      table: { columns: columns.map((c) => (c.key === "severity" ? { ...c, value: (x) => x.severity } : c)), rows: r.findings },
      content: r.findings.length
        ? sortable({ id: "audit-findings", columns, rows: r.findings, params: ctx.params, sort: "affected_sessions", caption: `${int(r.findings.length)} findings over ${int(r.sessions)} sessions of ${int(r.persons)} persons` })
        : h("p.empty", `No findings: ${int(r.sessions)} sessions audited, nothing to fix.`),
    });
    tiles.replaceChildren(
      ...[
        ["Sessions audited", int(r.sessions), "sessions"],
        ["Findings", int(Object.values(r.findings_by_kind).reduce((a, b) => a + b, 0)), "findings"],
        ["Errors (broken landings)", int(r.findings_by_kind.error_landing || 0), "errors"],
        ["Registered assets", int(r.registered_assets), "assets"],
      ].map(([label, v, id]) => h("div.tile", { "data-tile": id }, h("span.tile-label", label), h("span.tile-value", v))),
    );

    const kindRows = Object.keys(KIND_LABELS).map((k) => ({ kind: k, label: KIND_LABELS[k], count: r.findings_by_kind[k] || 0 }));
    const shown = [...kindRows].reverse();
    kinds.set({
      definitions: defs,
      json: r.findings_by_kind,
      table: { columns: [{ key: "label", label: "Kind" }, { key: "count", label: "Findings", num: true, format: int }], rows: kindRows },
      height: 300,
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" } }),
        grid: { left: 180, right: 40, top: 8, bottom: 24 },
        xAxis: axis({ type: "value", minInterval: 1 }),
        yAxis: axis({ type: "category", data: shown.map((x) => x.label) }),
        series: [{ name: "Findings", type: "bar", data: shown.map((x) => x.count), itemStyle: { color: "#d64575", borderRadius: [0, 4, 4, 0] }, label: { show: true, position: "right", color: "#1f2937" } }],
      },
    });

    const mm = r.message_match;
    const sides = [["Matched", mm.matched], ["Mismatched", mm.mismatched]];
    match.set({
      definitions: defs,
      json: { similarity_min: mm.similarity_min, matched: mm.matched, mismatched: mm.mismatched, assets_without_copy: mm.assets_without_copy },
      table: {
        caption: `Pairs below ${mm.similarity_min} similarity are mismatched${mm.assets_without_copy.length ? `; without headline or copy to compare: ${mm.assets_without_copy.join(", ")}` : ""}`,
        columns: [
          { key: "side", label: "Pairs" },
          { key: "pairs", label: "Pairs", num: true, value: (x) => x.t.pairs, format: int },
          { key: "sessions", label: "Sessions", num: true, value: (x) => x.t.sessions, format: int },
          { key: "bounce_rate", label: "Bounce", num: true, value: (x) => x.t.bounce_rate, format: pct },
          { key: "conversion_rate", label: `Converting (${conversion})`, num: true, value: (x) => x.t.conversion_rate, format: pct },
        ],
        rows: sides.map(([side, t]) => ({ side, t })),
      },
      showTable: true,
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" }, valueFormatter: (v) => pct(v) }),
        legend: legend(),
        grid: { left: 56, right: 16, top: 40, bottom: 28 },
        xAxis: axis({ type: "category", data: ["Bounce rate", "Conversion rate"] }),
        yAxis: axis({ type: "value", axisLabel: { color: "#3d4757", formatter: (v) => pct(v) } }),
        series: sides.map(([side, t], i) => ({ name: side, type: "bar", data: [t.bounce_rate, t.conversion_rate], itemStyle: { color: i ? "#e8743b" : "#19a979" }, label: { show: true, position: "top", color: "#1f2937", formatter: (x) => pct(x.value) } })),
      },
    });

    const pairColumns = [
      { key: "asset", label: "Asset", text: true },
      { key: "kind", label: "Kind", text: true },
      { key: "landing_page", label: "Landing page", text: true },
      { key: "similarity", label: "Similarity", num: true, format: (v) => v.toFixed(3) },
      { key: "matched", label: "Matches", value: (x) => (x.matched ? 1 : 0), format: (v) => (v ? "yes" : h("strong", "no")) },
      { key: "sessions", label: "Sessions", num: true, format: int },
      { key: "persons", label: "Persons", num: true, format: int },
      { key: "bounce_rate", label: "Bounce", num: true, format: pct },
      { key: "conversion_rate", label: "Converting", num: true, format: pct },
      { key: "shared_terms", label: "Shared terms", nosort: true, value: (x) => x.shared_terms.join(", "), format: (v) => v || "–" },
    ];
    pairs.set({
      definitions: defs,
      json: mm.pairs,
      table: { columns: pairColumns, rows: mm.pairs },
      content: mm.pairs.length
        ? sortable({ id: "audit-pairs", columns: pairColumns, rows: mm.pairs, params: ctx.params, sort: "similarity", dir: "asc", prefix: "pairs_" })
        : h("p.empty", "No registered asset with a headline or copy received sessions in range."),
    });

    const spellRows = [["utm_source", r.utm.sources], ["utm_medium", r.utm.mediums], ["utm_campaign", r.utm.campaigns]].flatMap(([f, list]) => list.map((s) => ({ field: f, ...s })));
    const simple = (target, rows, columns, empty) =>
      target.set({ definitions: defs, json: rows, table: { columns, rows }, content: rows.length ? sortable({ id: `audit-${target.el.dataset.card}`, columns, rows, params: ctx.params, sort: columns.find((c) => c.num)?.key, prefix: `${target.el.dataset.card}_` }) : h("p.empty", empty) });
    simple(spellings, spellRows, [
      { key: "field", label: "Field", text: true },
      { key: "canonical", label: "Most used", text: true },
      { key: "variants", label: "Spellings", nosort: true, value: (x) => x.variants.map((v) => `${v.value} (${v.sessions})`).join(", ") },
      { key: "affected_sessions", label: "Sessions under other spellings", num: true, format: int },
      { key: "affected_persons", label: "Persons", num: true, format: int },
    ], "Every source, medium and campaign is spelled one way.");
    const traffic = (label) => [
      { key: "key", label, text: true },
      { key: "sessions", label: "Sessions", num: true, format: int },
      { key: "persons", label: "Persons", num: true, format: int },
    ];
    simple(unassigned, r.utm.unassigned, traffic("Source / medium"), "Every session has a channel.");
    simple(campaigns, r.utm.campaigns_without_asset, traffic("Campaign"), "Every campaign with traffic has a registered asset.");
    idle.set({
      definitions: defs,
      json: r.utm.assets_without_traffic,
      table: { columns: [{ key: "id", label: "Asset" }], rows: r.utm.assets_without_traffic.map((id) => ({ id })) },
      content: r.utm.assets_without_traffic.length ? null : h("p.empty", "Every registered asset received traffic."),
    });
    simple(errors, r.error_landings, [
      { key: "asset", label: "Tracked link (asset)", text: true },
      { key: "landing_page", label: "Landing page", text: true },
      { key: "sessions", label: "Sessions", num: true, format: int },
      { key: "error_sessions", label: "Hit an error", num: true, format: int },
      { key: "error_rate", label: "Error rate", num: true, format: pct },
      { key: "persons", label: "Persons", num: true, format: int },
    ], "No tracked link landed on an error.");
  });
  if (!r) for (const c of others) c.error("The audit failed: see Findings above.");
}
