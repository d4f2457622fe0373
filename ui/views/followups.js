// Follow-ups: the orchestration's journeys (`GET .../journeys`): each journey's status,
// entries, persons at each step, goal exits, sends and what the caps, suppression and quiet
// hours held back, with pause and resume (`POST .../journeys/{name}/pause|resume`, the same
// api key), and each journey's steps as a chart.

import { h, fill, toast } from "../lib/dom.js";
import { journeys, journeysDefinition, journeyAction } from "../lib/api.js";
import { card } from "../lib/card.js";
import { sortable } from "../lib/sortable.js";
import { header, grid, axis, tooltip, legend } from "../lib/view.js";
import { int, pct, when } from "../lib/format.js";

const STEP_SERIES = [
  ["reached", "Reached", "#9db7f5"],
  ["persons_waiting", "At the step now", "#2456d6"],
  ["sends", "Sends", "#19a979"],
  ["capped", "Capped", "#e8743b"],
  ["suppressed", "Suppressed", "#d64575"],
  ["quiet_delayed", "Held for quiet hours", "#c9a227"],
  ["goal_exits", "Exited by goal", "#9b51e0"],
];

const trigger = (t) => (t.event ? `event ${t.event}` : "audience");

export async function render(ctx) {
  const refresh = h("button.ghost.small", { type: "button", id: "followups-refresh", onclick: () => load() }, "Refresh");
  const tiles = h("div.tiles", { "aria-live": "polite" });
  const list = card({ title: "Journeys", description: "Every follow-up journey: who entered, where they are, who reached the goal, what was sent and what the caps, suppressions and quiet hours held back", wide: true });
  const steps = h("div.grid.journey-steps");
  ctx.main.append(
    header(ctx, "Follow-ups", "The journeys that follow up on your customers, without overdoing it"),
    h("div.row-actions", refresh),
    tiles,
    grid(list),
    steps,
  );

  async function act(name, action, button) {
    button.disabled = true;
    try {
      await journeyAction(ctx.project, name, action);
      toast(`Journey ${name} ${action === "pause" ? "paused" : "resumed"}`);
    } catch (e) {
      toast(`Could not ${action} ${name}: ${e.message}`);
    }
    await load();
    document.getElementById(`followups-${action === "pause" ? "resume" : "pause"}-${name}`)?.focus();
  }

  async function load() {
    list.loading();
    let r;
    try {
      r = await journeys(ctx.project);
    } catch (e) {
      list.error(`journeys failed: ${e.message}`);
      fill(steps);
      return;
    }
    const defs = [journeysDefinition(ctx.project)];
    tiles.replaceChildren(
      ...[
        ["Journeys", int(r.journeys.length), "journeys"],
        ["Persons in journeys", int(r.persons_in_journeys), "persons"],
        ["Sends in flight", int(r.sends_in_flight), "in-flight"],
        ["Suppressed ids", int(r.suppressed), "suppressed"],
      ].map(([label, v, id]) => h("div.tile", { "data-tile": id }, h("span.tile-label", label), h("span.tile-value", v))),
    );
    const columns = [
      { key: "name", label: "Journey", text: true, format: (v, j) => h("span.asset", h("strong", v), h("span.sub", trigger(j.trigger))) },
      { key: "status", label: "Status", text: true, format: (v) => h(`span.status.status-${v}`, v) },
      { key: "entered", label: "Entered", num: true, format: int },
      { key: "active", label: "At a step", num: true, format: int },
      { key: "watching_goal", label: "Past the last step", num: true, format: int },
      { key: "converted", label: "Exited by goal", num: true, format: int },
      { key: "sends", label: "Sends", num: true, format: int },
      { key: "capped", label: "Capped", num: true, format: int },
      { key: "suppressed", label: "Suppressed", num: true, format: int },
      { key: "quiet_delayed", label: "Held for quiet hours", num: true, format: int },
      { key: "holdout", label: "Converting: treated / holdout", num: true, value: (j) => j.conversion.treatment.rate, format: (_, j) => `${pct(j.conversion.treatment.rate)} / ${pct(j.conversion.holdout.rate)}` },
      {
        key: "action", label: "Action", nosort: true, value: () => "",
        format: (_, j) => {
          if (j.status === "archived") return "–";
          const action = j.status === "paused" ? "resume" : "pause";
          const b = h("button.ghost.small", { type: "button", id: `followups-${action}-${j.name}`, "data-journey": j.name, "aria-label": `${action === "pause" ? "Pause" : "Resume"} journey ${j.name}` }, action === "pause" ? "Pause" : "Resume");
          b.addEventListener("click", () => act(j.name, action, b));
          return b;
        },
      },
    ];
    list.set({
      definitions: defs,
      json: r,
      table: { columns: columns.filter((c) => c.key !== "action"), rows: r.journeys },
      content: r.journeys.length
        ? sortable({ id: "followups-journeys", columns, rows: r.journeys, params: ctx.params, sort: "entered", caption: `${int(r.journeys.length)} journeys` })
        : h("p.empty", "No journeys yet: create one with `throughline journeys create FILE.toml` or POST /api/v1/projects/{project}/journeys."),
    });

    fill(steps);
    for (const j of r.journeys) {
      const c = card({ title: `Steps of ${j.name}`, description: `${j.status}; ${trigger(j.trigger)}${j.goal ? `, goal ${j.goal}` : ""}; created ${when(j.created)}`, wide: r.journeys.length === 1 });
      steps.append(c.el);
      const labels = j.steps.map((s) => `${s.id} (${s.type})`);
      c.set({
        definitions: defs,
        json: j,
        table: {
          columns: [
            { key: "id", label: "Step" },
            { key: "type", label: "Type" },
            ...STEP_SERIES.map(([k, label]) => ({ key: k, label, num: true, format: (v) => (v === undefined ? "–" : int(v)) })),
          ],
          rows: j.steps,
        },
        height: Math.max(260, j.steps.length * 70 + 60),
        option: {
          tooltip: tooltip({ axisPointer: { type: "shadow" } }),
          legend: legend({ type: "scroll" }),
          grid: { left: 150, right: 40, top: 40, bottom: 24 },
          xAxis: axis({ type: "value", minInterval: 1 }),
          yAxis: axis({ type: "category", inverse: true, data: labels, axisLabel: { color: "#3d4757", width: 140, overflow: "truncate" } }),
          series: STEP_SERIES.map(([k, label, color]) => ({ name: label, type: "bar", barGap: "10%", itemStyle: { color }, data: j.steps.map((s) => s[k] ?? null) })),
        },
      });
    }
  }
  await load();
}
