// Overview: volume per day, sessions by channel, the main funnel's conversion, the top
// assets, and the newest events as they arrive.

import { h, fill } from "../lib/dom.js";
import { recent } from "../lib/api.js";
import { card, renderTable } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults } from "../lib/defaults.js";
import { href } from "../lib/route.js";
import { header, run, grid, axis, tooltip, legend } from "../lib/view.js";
import { int, pct, when, money } from "../lib/format.js";

const LIVE_EVENTS = 12;
const LIVE_POLL_MS = 5000;

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const c = common(ctx.params);
  const tiles = h("div.tiles", { "aria-live": "polite" });
  const tile = (label, id) => h("div.tile", { "data-tile": id }, h("span.tile-label", label), h("span.tile-value", "…"));
  const t = {
    events: tile("Events", "events"),
    persons: tile("Persons", "persons"),
    sessions: tile("Sessions", "sessions"),
    conversion: tile(`Conversion: ${d.funnel[0]} → ${d.funnel[d.funnel.length - 1]}`, "conversion"),
  };
  const setTile = (el, v) => (el.querySelector(".tile-value").textContent = v);
  fill(tiles, Object.values(t));

  const perDay = card({ title: "Events and persons per day", description: "Every named event (tracks and named page views) and the distinct persons doing them", wide: true });
  const channels = card({ title: "Sessions by channel", description: "GA4 default channel groups of each session's first event" });
  const funnel = card({ title: "Main funnel", description: d.funnel.join(" → ") });
  const assets = card({ title: "Top assets", description: `By sessions; conversions of ${d.conversion} credited last-touch`, wide: true });
  const live = card({ title: "Latest events", description: "The newest events in the store, refreshed every 5 seconds (not filtered)", wide: true });

  ctx.main.append(
    header(ctx, "Overview", `Project ${ctx.project}`),
    form(ctx, []),
    tiles,
    grid(perDay, channels, funnel, assets, live),
  );

  const trendsReq = { events: ["*"], interval: "day", ...c };
  run(perDay, ctx.project, "trends", trendsReq, (r, defs) => {
    const total = r.totals[0] || { events: 0, persons: 0 };
    setTile(t.events, int(total.events));
    setTile(t.persons, int(total.persons));
    perDay.set({
      definitions: defs,
      json: r,
      table: { columns: [{ key: "date", label: "Date" }, { key: "events", label: "Events", num: true, format: int }, { key: "persons", label: "Persons", num: true, format: int }], rows: r.rows },
      option: {
        legend: legend(),
        tooltip: tooltip(),
        grid: { left: 56, right: 56, top: 36, bottom: 28 },
        xAxis: axis({ type: "category", data: r.rows.map((x) => x.date) }),
        yAxis: [axis({ type: "value", name: "events" }), axis({ type: "value", name: "persons", splitLine: { show: false } })],
        series: [
          { name: "Events", type: "bar", data: r.rows.map((x) => x.events), itemStyle: { color: "#9db7f5" } },
          { name: "Persons", type: "line", yAxisIndex: 1, smooth: true, symbol: "none", lineStyle: { width: 2.5 }, data: r.rows.map((x) => x.persons), color: "#1b3a8c" },
        ],
      },
    });
  });

  const sessionsReq = { by: "channel", ...c };
  run(channels, ctx.project, "sessions", sessionsReq, (r, defs) => {
    setTile(t.sessions, int(r.total.sessions));
    const rows = [...r.rows].reverse();
    channels.set({
      definitions: defs,
      json: r,
      table: {
        columns: [
          { key: "key", label: "Channel" }, { key: "sessions", label: "Sessions", num: true, format: int },
          { key: "persons", label: "Persons", num: true, format: int }, { key: "engagement_rate", label: "Engaged", num: true, format: pct },
          { key: "bounce_rate", label: "Bounce", num: true, format: pct },
        ],
        rows: r.rows,
      },
      height: Math.max(220, rows.length * 26 + 40),
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" } }),
        grid: { left: 120, right: 48, top: 8, bottom: 24 },
        xAxis: axis({ type: "value" }),
        yAxis: axis({ type: "category", data: rows.map((x) => x.key) }),
        series: [{ name: "Sessions", type: "bar", data: rows.map((x) => x.sessions), label: { show: true, position: "right", color: "#3d4757" }, itemStyle: { color: "#2456d6", borderRadius: [0, 4, 4, 0] } }],
      },
    });
  });

  const funnelReq = { steps: d.funnel, window: "7d", ...c };
  run(funnel, ctx.project, "funnel", funnelReq, (r, defs) => {
    const last = r.steps[r.steps.length - 1];
    setTile(t.conversion, pct(last?.conversion_from_first));
    funnel.set({
      definitions: defs,
      json: r,
      table: {
        columns: [{ key: "name", label: "Step" }, { key: "persons", label: "Persons", num: true, format: int }, { key: "conversion_from_first", label: "From first", num: true, format: pct }],
        rows: r.steps,
      },
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" } }),
        grid: { left: 48, right: 16, top: 24, bottom: 64 },
        xAxis: axis({ type: "category", data: r.steps.map((s) => s.name), axisLabel: { color: "#3d4757", interval: 0, width: 80, overflow: "break", lineHeight: 14 } }),
        yAxis: axis({ type: "value" }),
        series: [{ type: "bar", name: "Persons", data: r.steps.map((s) => s.persons), barWidth: "55%", itemStyle: { color: "#19a979", borderRadius: [4, 4, 0, 0] }, label: { show: true, position: "top", color: "#1f2937", formatter: (p) => pct(r.steps[p.dataIndex].conversion_from_first) } }],
      },
    });
  });

  const assetsReq = { conversion: d.conversion, window: "7d", limit: 8, ...(d.value ? { value: d.value } : {}), ...c };
  run(assets, ctx.project, "assets", assetsReq, (r, defs) => {
    const columns = [
      { key: "asset", label: "Asset", format: (v, row) => row.name || v },
      { key: "channel", label: "Channel" },
      { key: "sessions", label: "Sessions", num: true, format: int },
      { key: "conversion_rate", label: "Converting", num: true, format: pct },
      { key: "conversions", label: "Conversions", num: true, format: int },
    ];
    if (d.value) columns.push({ key: "revenue", label: "Revenue", num: true, format: money });
    assets.set({ definitions: defs, json: r, table: { columns, rows: r.rows } });
  });

  // The live feed: polled while the view is open and the tab visible.
  let seen = new Set();
  let first = true;
  const liveReq = { method: "GET", path: `/api/v1/projects/${encodeURIComponent(ctx.project)}/events/recent?limit=${LIVE_EVENTS}` };
  async function poll() {
    if (document.hidden) return;
    try {
      const r = await recent(ctx.project, LIVE_EVENTS);
      const fresh = new Set(r.events.map((e) => e.message_id));
      const columns = [
        { key: "timestamp", label: "Time", format: when },
        { key: "event", label: "Event", format: (v, e) => v || e.type },
        { key: "person_id", label: "Person", format: (v) => h("a", { href: href(ctx.project, "person", { id: v }) }, v) },
        { key: "sent_as", label: "Sent as" },
        { key: "path", label: "Page", format: (v) => v || "–" },
        { key: "utm_source", label: "UTM source", format: (v) => v || "–" },
      ];
      const table = renderTable({ columns, rows: r.events });
      if (!first) {
        table.querySelectorAll("tbody tr").forEach((tr, i) => {
          if (!seen.has(r.events[i].message_id)) tr.classList.add("new");
        });
      }
      first = false;
      seen = fresh;
      live.set({
        definitions: [liveReq],
        json: r,
        table: { columns, rows: r.events },
        content: h("div", h("p.live", h("span.dot", { "aria-hidden": "true" }), `${int(r.total_events)} events stored`), table),
      });
    } catch (e) {
      live.error(`recent events failed: ${e.message}`);
    }
  }
  live.loading();
  poll();
  const timer = setInterval(poll, LIVE_POLL_MS);
  ctx.onLeave(() => clearInterval(timer));
}
