// What views share: the page header with a link that restores the view, running a query
// into a card, and chart styling.

import { h, toast } from "./dom.js";
import { query, definition } from "./api.js";

export function header(ctx, title, sub) {
  const copy = h("button.ghost.small", { type: "button", id: `${ctx.view}-link`, onclick: copyLink }, "Copy link to this view");
  async function copyLink() {
    try {
      await navigator.clipboard.writeText(location.href);
      toast("Link copied: it restores this view (the api key is not in it)");
    } catch {
      toast(location.href);
    }
  }
  return h("header.view-head", h("div", h("h1", { tabindex: "-1" }, title), sub ? h("p.sub", sub) : null), copy);
}

/** Runs one query into a card: loading state, errors in the card, `show(answer, defs)`. */
export async function run(card, project, kind, body, show) {
  card.loading();
  try {
    const answer = await query(project, kind, body);
    show(answer, [definition(project, kind, body)]);
    return answer;
  } catch (e) {
    card.error(`${kind} query failed: ${e.message}`);
    return null;
  }
}

export const grid = (...cards) => h("div.grid", cards.map((c) => c.el || c));

const AXIS = { axisLine: { lineStyle: { color: "#c5ccd8" } }, axisLabel: { color: "#3d4757" }, splitLine: { lineStyle: { color: "#e8ebf1" } } };
export const axis = (extra = {}) => ({ ...AXIS, ...extra });
export const tooltip = (extra = {}) => ({ trigger: "axis", confine: true, ...extra });
export const legend = (extra = {}) => ({ top: 0, textStyle: { color: "#3d4757" }, ...extra });
