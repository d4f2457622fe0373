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

/**
 * A custom series drawing interval bars: `data` holds `[category index, low, high]` as the
 * API answered them (ECharts has no error bars of its own). Items with a null bound are
 * skipped.
 */
export function intervals(name, data, color, extra = {}) {
  return {
    name,
    type: "custom",
    data: data.filter((d) => d[1] !== null && d[1] !== undefined && d[2] !== null && d[2] !== undefined),
    encode: { x: 0, y: [1, 2] },
    z: 3,
    tooltip: { show: false },
    renderItem: (params, api) => {
      const lo = api.coord([api.value(0), api.value(1)]);
      const hi = api.coord([api.value(0), api.value(2)]);
      const w = Math.max(3, Math.min(10, api.size([1, 0])[0] * 0.15));
      const style = { stroke: color, lineWidth: 1.6 };
      return {
        type: "group",
        children: [
          { type: "line", shape: { x1: lo[0], y1: lo[1], x2: hi[0], y2: hi[1] }, style },
          { type: "line", shape: { x1: lo[0] - w, y1: lo[1], x2: lo[0] + w, y2: lo[1] }, style },
          { type: "line", shape: { x1: hi[0] - w, y1: hi[1], x2: hi[0] + w, y2: hi[1] }, style },
        ],
      };
    },
    ...extra,
  };
}
