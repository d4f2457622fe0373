// Funnel builder: steps, window, order, exclusions and breakdown; the funnel with the
// drop-off between steps, conversion by breakdown, and the time-to-convert histogram.

import { h, field, select, toast } from "../lib/dom.js";
import { card } from "../lib/card.js";
import { common, form } from "../lib/filters.js";
import { defaults, pinFunnel } from "../lib/defaults.js";
import { header, run, grid, axis, tooltip, legend } from "../lib/view.js";
import { int, pct, seconds } from "../lib/format.js";

const WINDOWS = [["1h", "1 hour"], ["1d", "1 day"], ["7d", "7 days"], ["14d", "14 days"], ["30d", "30 days"], ["90d", "90 days"]];
const ORDERS = [["ordered", "Ordered (other events allowed between steps)"], ["strict", "Strict (no other event between steps)"], ["unordered", "Any order"]];
export const BREAKDOWNS = [["", "No breakdown"], ["channel", "Channel"], ["source", "Source"], ["medium", "Medium"], ["source_medium", "Source / medium"], ["campaign", "Campaign"], ["content", "Content"], ["landing_page", "Landing page"]];
const BREAKDOWN_BARS_MAX = 15;

export async function render(ctx) {
  const d = await defaults(ctx.project);
  const p = ctx.params;
  const steps = p.getAll("step").length ? p.getAll("step") : d.funnel;
  const exclude = p.getAll("exclude");
  const req = { steps, window: p.get("window") || "7d", order: p.get("order") || "ordered", ...common(p) };
  if (exclude.length) req.exclude = exclude;
  if (p.get("by")) req.by = p.get("by");

  const listId = "funnel-names";
  const datalist = h("datalist", { id: listId }, d.names.map((n) => h("option", { value: n })));
  const stepList = h("ol.steps", { "aria-label": "Funnel steps" });
  const excludeList = h("ul.steps", { "aria-label": "Exclusions" });
  const row = (list, name, value, label) => {
    const input = h("input", { type: "text", name, value, list: listId, required: name === "step", "aria-label": label, autocomplete: "off" });
    const li = h("li", input);
    const move = (dir) => {
      const sib = dir < 0 ? li.previousElementSibling : li.nextElementSibling;
      if (!sib) return;
      if (dir < 0) list.insertBefore(li, sib);
      else list.insertBefore(sib, li);
      relabel();
      input.focus();
    };
    if (name === "step") {
      li.append(
        h("button.icon-btn", { type: "button", "aria-label": "Move step up", onclick: () => move(-1) }, "↑"),
        h("button.icon-btn", { type: "button", "aria-label": "Move step down", onclick: () => move(1) }, "↓"),
      );
    }
    li.append(h("button.icon-btn", { type: "button", "aria-label": `Remove ${name === "step" ? "step" : "exclusion"}`, onclick: () => { li.remove(); relabel(); } }, "✕"));
    list.append(li);
    return input;
  };
  function relabel() {
    [...stepList.querySelectorAll("input")].forEach((inp, i) => inp.setAttribute("aria-label", `Step ${i + 1}`));
  }
  steps.forEach((s, i) => row(stepList, "step", s, `Step ${i + 1}`));
  exclude.forEach((s) => row(excludeList, "exclude", s, "Exclusion"));

  const controls = form(ctx, [
    h(
      "fieldset.stepset",
      h("legend", "Steps"),
      stepList,
      h("button.ghost.small", { type: "button", id: "funnel-add-step", onclick: () => row(stepList, "step", "", `Step ${stepList.children.length + 1}`).focus() }, "Add step"),
      h("p.hint", "An event name, A|B for either, page:/path/* for page views, or 'Order Completed where revenue > 50'."),
    ),
    h(
      "fieldset.stepset",
      h("legend", "Exclusions"),
      excludeList,
      h("button.ghost.small", { type: "button", id: "funnel-add-exclusion", onclick: () => row(excludeList, "exclude", "", "Exclusion").focus() }, "Add exclusion"),
      h("p.hint", "An exclusion between two steps abandons the attempt."),
    ),
    field("Conversion window", select(WINDOWS, req.window, { name: "window", id: "funnel-window" })),
    field("Order", select(ORDERS, req.order, { name: "order", id: "funnel-order" })),
    field("Breakdown by first touch", select(BREAKDOWNS, req.by || "", { name: "by", id: "funnel-by" })),
    datalist,
  ], { submit: "Run funnel" });

  const pin = h("button.ghost.small", { type: "button", id: "funnel-pin", onclick: () => { pinFunnel(ctx.project, steps); toast("The Overview shows this funnel now"); } }, "Use as the Overview's main funnel");

  const chart = card({ title: "Funnel", description: "Persons reaching each step; the grey bar is the step before, the label the share that continued", wide: true, tall: true });
  const byCard = card({ title: "Conversion by breakdown", description: req.by ? `First step to last, by first-touch ${req.by}` : "Pick a breakdown to compare conversion by channel, campaign or landing page" });
  const histo = card({ title: "Time to convert", description: "Persons by the time from the previous step" });

  ctx.main.append(header(ctx, "Funnel builder", steps.join(" → ")), controls, h("div.row-actions", pin), grid(chart, byCard, histo));

  run(chart, ctx.project, "funnel", req, (r, defs) => {
    const names = r.steps.map((s, i) => `${i + 1}. ${s.name}`);
    chart.set({
      definitions: defs,
      json: r,
      showTable: true,
      table: {
        columns: [
          { key: "name", label: "Step" },
          { key: "persons", label: "Persons", num: true, format: int },
          { key: "conversion_from_previous", label: "From previous", num: true, format: pct },
          { key: "conversion_from_first", label: "From first", num: true, format: pct },
          { key: "median_seconds_to_convert", label: "Median time from previous", num: true, format: seconds },
          { key: "median_seconds_from_first", label: "Median time from first", num: true, format: seconds },
        ],
        rows: r.steps,
      },
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" } }),
        legend: legend({ data: ["Persons", "Previous step"] }),
        grid: { left: 64, right: 24, top: 40, bottom: 56 },
        xAxis: axis({ type: "category", data: names, axisLabel: { color: "#3d4757", interval: 0, width: 150, overflow: "break" } }),
        yAxis: axis({ type: "value" }),
        series: [
          {
            name: "Previous step", type: "bar", barWidth: "56%", barGap: "-100%", z: 1, silent: true,
            itemStyle: { color: "#e3e8f2", borderRadius: [4, 4, 0, 0] },
            data: r.steps.map((s, i) => (i === 0 ? null : r.steps[i - 1].persons)),
          },
          {
            name: "Persons", type: "bar", barWidth: "56%", z: 2,
            itemStyle: { color: "#2456d6", borderRadius: [4, 4, 0, 0] },
            label: {
              show: true, position: "top", color: "#1f2937", fontWeight: 600,
              formatter: (x) => {
                const s = r.steps[x.dataIndex];
                return x.dataIndex === 0 ? int(s.persons) : `${int(s.persons)}  ·  ${pct(s.conversion_from_previous)}`;
              },
            },
            data: r.steps.map((s) => s.persons),
          },
        ],
      },
    });

    // Time to convert: the last step's histogram (the answer has one per step).
    const last = r.steps[r.steps.length - 1];
    if (!last || r.steps.length < 2) {
      histo.set({ definitions: defs, json: r, content: h("p.sub", "Add a second step to see how long conversion takes.") });
    } else {
      const labels = last.time_to_convert_histogram.map((b) => (b.le_seconds === null ? "longer" : `≤ ${seconds(b.le_seconds)}`));
      histo.set({
        definitions: defs,
        json: r.steps.map((s) => ({ step: s.name, histogram: s.time_to_convert_histogram })),
        table: {
          columns: [{ key: "bucket", label: `Time to ${last.name}` }, { key: "persons", label: "Persons", num: true, format: int }],
          rows: last.time_to_convert_histogram.map((b, i) => ({ bucket: labels[i], persons: b.persons })),
        },
        option: {
          tooltip: tooltip({ axisPointer: { type: "shadow" } }),
          grid: { left: 56, right: 16, top: 24, bottom: 32 },
          xAxis: axis({ type: "category", data: labels }),
          yAxis: axis({ type: "value" }),
          series: [{ type: "bar", name: "Persons", data: last.time_to_convert_histogram.map((b) => b.persons), itemStyle: { color: "#e8743b", borderRadius: [4, 4, 0, 0] } }],
        },
      });
    }

    if (!r.breakdown) {
      const params = new URLSearchParams(ctx.params);
      params.set("by", "channel");
      byCard.set({ definitions: defs, json: null, content: h("p.sub", "No breakdown chosen. ", h("a", { href: `#/${encodeURIComponent(ctx.project)}/funnel?${params}` }, "Break down by channel")) });
      return;
    }
    const rows = r.breakdown.slice(0, BREAKDOWN_BARS_MAX);
    const endOf = (b) => b.steps[b.steps.length - 1];
    const shown = [...rows].reverse();
    byCard.set({
      definitions: defs,
      json: r.breakdown,
      table: {
        columns: [
          { key: "value", label: req.by },
          { label: "Entered", num: true, value: (b) => b.steps[0].persons, format: int },
          { label: "Converted", num: true, value: (b) => endOf(b).persons, format: int },
          { label: "Conversion", num: true, value: (b) => endOf(b).conversion_from_first, format: pct },
        ],
        rows: r.breakdown,
      },
      height: Math.max(240, shown.length * 28 + 40),
      option: {
        tooltip: tooltip({ axisPointer: { type: "shadow" }, valueFormatter: pct }),
        grid: { left: 150, right: 56, top: 8, bottom: 24 },
        xAxis: axis({ type: "value", axisLabel: { color: "#3d4757", formatter: (v) => pct(v) } }),
        yAxis: axis({ type: "category", data: shown.map((b) => b.value), axisLabel: { color: "#3d4757", width: 140, overflow: "truncate" } }),
        series: [{ type: "bar", name: "Conversion", data: shown.map((b) => endOf(b).conversion_from_first), label: { show: true, position: "right", color: "#3d4757", formatter: (x) => pct(x.value) }, itemStyle: { color: "#9b51e0", borderRadius: [0, 4, 4, 0] } }],
      },
    });
  });
}
