// The controls every view shares: a date range and a channel/campaign filter. They map
// to the request fields every query kind takes (`from`, `to`, `filter`), so a filtered
// chart's definition shows exactly what was asked.

import { h, field, select } from "./dom.js";
import { catalog } from "./api.js";

/** The parameters these controls own; the navigation carries them from view to view. */
export const COMMON = ["from", "to", "channel", "campaign"];

const DAY_MS = 86400000;

/** `from`, `to` (exclusive: the day after the inclusive "to" date) and `filter`. */
export function common(params) {
  const out = {};
  if (params.get("from")) out.from = params.get("from");
  if (params.get("to")) {
    const t = new Date(`${params.get("to")}T00:00:00Z`).getTime() + DAY_MS;
    out.to = new Date(t).toISOString().slice(0, 10);
  }
  const filter = {};
  if (params.get("channel")) filter.channel = params.get("channel");
  if (params.get("campaign")) filter.campaign = params.get("campaign");
  if (Object.keys(filter).length) out.filter = filter;
  return out;
}

/** Channel and campaign values, from the project's catalog (no scan). */
function values(project) {
  return catalog(project).then((c) => [c.channels, ["(not set)", ...c.campaigns]]);
}

/** The shared fields, to put in a view's form. */
export function commonFields(ctx) {
  const p = ctx.params;
  const from = h("input", { type: "date", id: `${ctx.view}-from`, name: "from", value: p.get("from") || "" });
  const to = h("input", { type: "date", id: `${ctx.view}-to`, name: "to", value: p.get("to") || "" });
  const channel = select([["", "All channels"]], "", { id: `${ctx.view}-channel`, name: "channel" });
  const campaign = select([["", "All campaigns"]], "", { id: `${ctx.view}-campaign`, name: "campaign" });
  const fill = (sel, list, current, all) => {
    const opts = [["", all], ...list.map((v) => [v, v])];
    if (current && !list.includes(current)) opts.push([current, current]);
    sel.replaceChildren(...opts.map(([v, l]) => h("option", { value: v, selected: v === current }, l)));
  };
  fill(channel, [], p.get("channel") || "", "All channels");
  fill(campaign, [], p.get("campaign") || "", "All campaigns");
  values(ctx.project)
    .then(([channels, campaigns]) => {
      fill(channel, channels, channel.value, "All channels");
      fill(campaign, campaigns, campaign.value, "All campaigns");
    })
    .catch(() => {});
  return h(
    "fieldset.common",
    h("legend.visually-hidden", "Date range and audience"),
    field("From", from),
    field("To (inclusive)", to),
    field("First-touch channel", channel),
    field("First-touch campaign", campaign),
  );
}

/** A view's form: its own fields, the shared ones, and a submit button. */
export function form(ctx, fields, { submit = "Apply", onsubmit } = {}) {
  const f = h(
    "form.controls",
    { "aria-label": `${ctx.title} settings` },
    h("div.fields", fields),
    commonFields(ctx),
    h("div.submit", h("button.primary", { type: "submit", id: `${ctx.view}-run` }, submit)),
  );
  f.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(f);
    const params = new URLSearchParams();
    for (const [k, v] of data.entries()) {
      if (typeof v === "string" && v.trim() !== "") params.append(k, v.trim());
    }
    (onsubmit || ((p) => ctx.navigate(p)))(params, f);
  });
  return f;
}
