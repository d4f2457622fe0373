// A table sorted by any column header, its sort kept in the address (`{prefix}sort`,
// `{prefix}dir`) so the link restores it. Sorting reorders the answer's rows; it never
// changes a number.

import { h, fill } from "./dom.js";
import { parse, replaceParams } from "./route.js";

/**
 * columns: [{key, label, num, text (sort as text), nosort, value(row), format(v, row)}];
 * returns the table's wrapper, drawn sorted by the address's column (else `sort`, `dir`).
 */
export function sortable({ id, columns, rows, caption, params, sort, dir = "desc", prefix = "" }) {
  const sortParam = `${prefix}sort`;
  const dirParam = `${prefix}dir`;
  const wrap = h("div.table-wrap", { id });
  const valueOf = (c, r) => (typeof c.value === "function" ? c.value(r) : r[c.key]);
  const draw = (key, direction) => {
    const col = columns.find((c) => c.key === key && !c.nosort) || columns.find((c) => c.key === sort) || columns[0];
    const sorted = [...rows].sort((a, b) => {
      const va = valueOf(col, a);
      const vb = valueOf(col, b);
      const c = col.text ? String(va ?? "").localeCompare(String(vb ?? "")) : (va ?? -Infinity) - (vb ?? -Infinity);
      return direction === "asc" ? c : -c;
    });
    const th = (c) => {
      if (c.nosort) return h("th", { scope: "col", class: c.num ? "num" : null }, c.label);
      const active = c.key === col.key;
      const next = active && direction === "desc" ? "asc" : "desc";
      return h(
        "th",
        { scope: "col", class: c.num ? "num" : null, "aria-sort": active ? (direction === "asc" ? "ascending" : "descending") : "none" },
        h(
          "button.sort",
          { type: "button", id: `${id}-sort-${c.key}`, "data-sort": c.key, onclick: () => sortBy(c.key, next) },
          c.label,
          h("span.arrow", { "aria-hidden": "true" }, active ? (direction === "asc" ? " ▲" : " ▼") : ""),
        ),
      );
    };
    fill(
      wrap,
      h(
        "table",
        caption ? h("caption", caption) : null,
        h("thead", h("tr", columns.map(th))),
        h("tbody", sorted.map((r) => h("tr", columns.map((c) => {
          const v = valueOf(c, r);
          return h("td", { class: c.num ? "num" : null }, c.format ? c.format(v, r) : v ?? "–");
        })))),
      ),
    );
  };
  const sortBy = (key, direction) => {
    const current = parse().params;
    current.set(sortParam, key);
    current.set(dirParam, direction);
    replaceParams(current);
    draw(key, direction);
    document.getElementById(`${id}-sort-${key}`)?.focus();
  };
  draw(params.get(sortParam) || sort, params.get(dirParam) === "asc" ? "asc" : params.get(dirParam) === "desc" ? "desc" : dir);
  return wrap;
}
