// How numbers read: thousands separators, percentages, durations.

const nf = new Intl.NumberFormat("en-US");
const nf1 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
const nf2 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2, minimumFractionDigits: 2 });

export const int = (v) => (v === null || v === undefined ? "–" : nf.format(Math.round(v)));
export const num = (v) => (v === null || v === undefined ? "–" : nf1.format(v));
export const money = (v) => (v === null || v === undefined ? "–" : nf2.format(v));
export const pct = (v) => (v === null || v === undefined ? "–" : `${nf1.format(v * 100)}%`);

export function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${nf1.format(s / 3600)}h`;
  return `${nf1.format(s / 86400)}d`;
}

/** `2026-03-01T10:00:00.000Z` as a short local date and time. */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString("en-GB", {
    year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit",
  });
}
