// A chart or table card: title, the chart (ECharts) or table, and the actions every
// chart has: copy the answer as JSON, download its table as CSV, and show its definition
// (the exact API request behind it, so every number can be explained and re-run).

import { h, fill, toast } from "./dom.js";

const live = new Set();

/** Disposes every chart of the view being left. */
export function disposeCharts() {
  for (const c of live) c.dispose();
  live.clear();
}

const FONT = "Inter, 'Segoe UI', system-ui, -apple-system, Roboto, 'Helvetica Neue', Arial, sans-serif";

export const PALETTE = [
  "#2456d6", "#e8743b", "#19a979", "#9b51e0", "#d64575", "#0f9bb4",
  "#c9a227", "#5a6b85", "#7cb342", "#8d6e63", "#3f8efc", "#f2994a",
];

/** A card; `set()` fills it once the answer is in. */
export function card({ title, description, wide = false, tall = false }) {
  const slug = title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  const titleId = `card-${slug}-${Math.random().toString(36).slice(2, 7)}`;
  const defId = `${titleId}-def`;
  const body = h("div.card-body");
  const def = h("pre.definition", { id: defId, hidden: true });
  const state = { json: null, table: null, definition: null, chart: null };
  const defButton = h("button.ghost.small", { type: "button", "aria-expanded": "false", "aria-controls": defId, onclick: toggleDef }, "Definition");
  const actions = h(
    "div.actions",
    h("button.ghost.small", { type: "button", onclick: copyJson, "aria-label": `Copy ${title} as JSON` }, "Copy JSON"),
    h("button.ghost.small", { type: "button", onclick: downloadCsv, "aria-label": `Download ${title} as CSV` }, "CSV"),
    defButton,
  );
  const el = h(
    `section.card${wide ? ".wide" : ""}${tall ? ".tall" : ""}`,
    { "aria-labelledby": titleId, "data-card": slug },
    h("header.card-head", h("div", h("h2", { id: titleId }, title), description ? h("p.sub", description) : null), actions),
    def,
    body,
  );

  function toggleDef() {
    const open = def.hidden;
    def.hidden = !open;
    defButton.setAttribute("aria-expanded", String(open));
  }

  async function copyJson() {
    if (!state.json) return toast("Nothing to copy yet");
    const text = JSON.stringify(state.json, null, 2);
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Not a secure context (plain http on another host): the old way.
      const ta = h("textarea.offscreen", { readonly: true }, text);
      document.body.append(ta);
      ta.select();
      document.execCommand("copy");
      ta.remove();
    }
    toast(`Copied ${title} as JSON`);
  }

  function downloadCsv() {
    if (!state.table) return toast("Nothing to download yet");
    const blob = new Blob([toCsv(state.table)], { type: "text/csv" });
    const a = h("a", { href: URL.createObjectURL(blob), download: `${slug}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  return {
    el,
    body,
    loading() {
      fill(body, h("div.placeholder", { role: "status" }, "Loading…"));
    },
    error(message) {
      fill(body, h("div.error", { role: "alert" }, message));
    },
    /**
     * Shows an answer: `definitions` are the requests behind it (lib/api definition()),
     * `json` what to copy, `table` {columns: [{key,label,format}], rows} for CSV and the
     * data table, and either `option` (an ECharts option) or `content` (a node).
     */
    set({ definitions, json, table, option, content, height, showTable = false }) {
      state.json = json;
      state.table = table;
      fill(def, (definitions || []).map(renderDefinition));
      const parts = [];
      if (option) {
        const box = h("div.chart", { role: "img", "aria-label": `${title} chart; the data table below has the numbers` });
        if (height) box.style.height = `${height}px`;
        parts.push(box);
        requestAnimationFrame(() => draw(box, option));
      }
      if (content) parts.push(content);
      if (table && option) {
        const details = h("details.data", h("summary", "Data table"), renderTable(table));
        if (showTable) details.open = true;
        parts.push(details);
      } else if (table && !content) {
        parts.push(renderTable(table));
      }
      fill(body, parts);
    },
  };

  function draw(box, option) {
    if (!window.echarts) {
      fill(box, h("div.error", { role: "alert" }, "The chart library did not load."));
      return;
    }
    if (state.chart) {
      live.delete(state.chart);
      state.chart.dispose();
    }
    const chart = window.echarts.init(box, null, { renderer: "canvas" });
    // Tooltips drawn as canvas text, never HTML: labels come from event data.
    const tip = option.tooltip ? { ...option.tooltip, renderMode: "richText" } : undefined;
    chart.setOption({ color: PALETTE, textStyle: { fontFamily: FONT }, animationDuration: 300, ...option, ...(tip ? { tooltip: tip } : {}) });
    box.dataset.ready = "true";
    const ro = new ResizeObserver(() => chart.resize());
    ro.observe(box);
    state.chart = { dispose: () => { ro.disconnect(); chart.dispose(); }, chart };
    live.add(state.chart);
  }
}

function renderDefinition(d) {
  const body = d.body === undefined ? "" : JSON.stringify(d.body, null, 2);
  const curl = [
    `curl -s -X ${d.method} "$THROUGHLINE_URL${d.path}"`,
    `  -H "Authorization: Bearer $THROUGHLINE_API_KEY"`,
    d.body === undefined ? null : `  -H "Content-Type: application/json" -d '${JSON.stringify(d.body).replace(/'/g, "'\\''")}'`,
  ].filter(Boolean).join(" \\\n");
  return h("div.def", h("code.req", `${d.method} ${d.path}`), body ? h("code.body", body) : null, h("code.curl", curl));
}

/** A plain table of {columns, rows}; `columns[i].format(value, row)` renders a cell. */
export function renderTable({ columns, rows, caption }) {
  return h(
    "div.table-wrap",
    h(
      "table",
      caption ? h("caption", caption) : null,
      h("thead", h("tr", columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      h("tbody", rows.map((r) => h("tr", columns.map((c) => h("td", { class: c.num ? "num" : null }, cell(c, r)))))),
    ),
  );
}

function cell(c, r) {
  const v = typeof c.value === "function" ? c.value(r) : r[c.key];
  return c.format ? c.format(v, r) : v ?? "–";
}

export function toCsv({ columns, rows }) {
  const q = (v) => {
    const s = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const lines = [columns.map((c) => q(c.label)).join(",")];
  for (const r of rows) {
    lines.push(columns.map((c) => q(typeof c.value === "function" ? c.value(r) : r[c.key])).join(","));
  }
  return `${lines.join("\r\n")}\r\n`;
}
