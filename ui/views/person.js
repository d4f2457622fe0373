// People: find a person by any id or email, and see the stitched profile: every id they
// were seen under (devices, logins, emails), merged traits, and the timeline across
// devices and channels.

import { h, field } from "../lib/dom.js";
import { person, ApiError } from "../lib/api.js";
import { card, renderTable } from "../lib/card.js";
import { header, grid, axis, legend } from "../lib/view.js";
import { int, when } from "../lib/format.js";
import { href } from "../lib/route.js";

const KIND_LABELS = { user_id: "User ids", email: "Emails", anonymous_id: "Devices (anonymous ids)" };

export async function render(ctx) {
  const id = ctx.params.get("id") || "";
  const input = h("input", { type: "search", name: "id", id: "person-id", value: id, required: true, autocomplete: "off", placeholder: "user id, email or anonymous id" });
  const search = h("form.controls.search", { role: "search", "aria-label": "Find a person" }, h("div.fields", field("Person", input, "Any id the person was seen under: a user id, an email, a device's anonymous id")), h("div.submit", h("button.primary", { type: "submit", id: "person-run" }, "Find")));
  search.addEventListener("submit", (e) => {
    e.preventDefault();
    if (input.value.trim()) ctx.navigate(new URLSearchParams({ id: input.value.trim() }));
  });
  ctx.main.append(header(ctx, "People", "One person across every device, login and channel"), search);
  if (!id) {
    ctx.main.append(h("p.empty", "Search for a person, or open one from the Overview's latest events."));
    return;
  }

  const profile = card({ title: "Profile", description: "Stitched from every id below" });
  const ids = card({ title: "Identities", description: "The ids the identity graph joined into this person" });
  const timeline = card({ title: "Timeline", description: "The newest events by device (the id each was sent under), coloured by the channel of their session", wide: true, tall: true });
  ctx.main.append(grid(profile, ids, timeline));
  const def = [{ method: "GET", path: `/api/v1/projects/${encodeURIComponent(ctx.project)}/persons/${encodeURIComponent(id)}` }];
  profile.loading();
  ids.loading();
  timeline.loading();
  let p;
  try {
    p = await person(ctx.project, id);
  } catch (e) {
    const msg = e instanceof ApiError && e.status === 404 ? `No person is known by ${JSON.stringify(id)} in ${ctx.project}.` : `person lookup failed: ${e.message}`;
    for (const c of [profile, ids, timeline]) c.error(msg);
    return;
  }

  const facts = [
    ["Person id", p.person_id],
    ["First seen", when(p.first_seen)],
    ["Last seen", when(p.last_seen)],
    ["Events", int(p.event_count)],
    ["UTM sources", Object.entries(p.utm_sources).map(([k, v]) => `${k} (${v})`).join(", ") || "–"],
  ];
  const traits = Object.entries(p.traits).map(([k, v]) => ({ trait: k, value: typeof v === "object" ? JSON.stringify(v) : String(v) }));
  profile.set({
    definitions: def,
    json: p,
    table: { columns: [{ key: "trait", label: "Trait" }, { key: "value", label: "Value" }], rows: traits },
    content: h(
      "div",
      h("dl.facts", facts.map(([k, v]) => [h("dt", k), h("dd", v)])),
      h("h3", "Traits"),
      traits.length ? renderTable({ columns: [{ key: "trait", label: "Trait" }, { key: "value", label: "Value" }], rows: traits }) : h("p.sub", "No traits."),
    ),
  });

  const byKind = {};
  for (const x of p.ids) (byKind[x.kind] ||= []).push(x.id);
  ids.set({
    definitions: def,
    json: p.ids,
    table: { columns: [{ key: "kind", label: "Kind" }, { key: "id", label: "Id" }], rows: p.ids },
    content: h(
      "div.idlists",
      Object.entries(byKind).map(([k, list]) => h("div", h("h3", KIND_LABELS[k] || k), h("ul.chips", list.map((v) => h("li", h("a", { href: href(ctx.project, "person", { id: v }) }, v)))))),
      h("h3", "Events by name"),
      renderTable({ columns: [{ key: "name", label: "Event" }, { key: "count", label: "Count", num: true, format: int }], rows: Object.entries(p.events).sort((a, b) => b[1] - a[1]).map(([name, count]) => ({ name, count })) }),
    ),
  });

  const devices = [...new Set(p.timeline.map((e) => e.sent_as))];
  // The API names each visit's session channel; other events happen server-side.
  const channelOf = (e) => e.channel || "Server-side events";
  const groups = [...new Set(p.timeline.map(channelOf))];
  const columns = [
    { key: "timestamp", label: "Time", format: when },
    { key: "event", label: "Event", format: (v, e) => v || e.type },
    { key: "sent_as", label: "Device or login" },
    { key: "path", label: "Page", format: (v) => v || "–" },
    { key: "channel", label: "Session channel", format: (v) => v || "–" },
    { key: "utm_source", label: "Source", format: (v) => v || "–" },
    { key: "utm_medium", label: "Medium", format: (v) => v || "–" },
    { key: "utm_campaign", label: "Campaign", format: (v) => v || "–" },
    { key: "referrer", label: "Referrer", format: (v) => v || "–" },
  ];
  timeline.set({
    definitions: def,
    json: p.timeline,
    showTable: true,
    table: { columns, rows: p.timeline },
    height: Math.max(240, devices.length * 48 + 110),
    option: {
      legend: legend({ type: "scroll" }),
      tooltip: { trigger: "item", confine: true, formatter: (x) => `${when(x.data.e.timestamp)}\n${x.data.e.event || x.data.e.type}${x.data.e.path ? ` ${x.data.e.path}` : ""}\n${x.seriesName}` },
      grid: { left: 170, right: 24, top: 40, bottom: 40 },
      xAxis: axis({ type: "time" }),
      yAxis: axis({ type: "category", data: devices, axisLabel: { color: "#3d4757", width: 160, overflow: "truncate" } }),
      series: groups.map((g) => ({
        name: g,
        type: "scatter",
        symbolSize: 11,
        data: p.timeline.filter((e) => channelOf(e) === g).map((e) => ({ value: [e.timestamp, e.sent_as], e })),
      })),
    },
  });
}
