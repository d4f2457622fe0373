// Sensible first questions for a project, from the event names it has: the conversion
// (Segment's spec names first), the main funnel, a retention pair. The user can pin
// another main funnel from the funnel builder (kept in this browser's localStorage: it
// holds step names, never a key).

import { catalog } from "./api.js";

const CONVERSIONS = ["Order Completed", "Subscription Started", "Trial Started", "Signed Up", "Lead Generated", "Form Submitted"];
const FUNNELS = [
  ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"],
  ["Signup Started", "Signed Up", "Trial Started", "Subscription Started"],
  ["Signed Up", "Trial Started", "Subscription Started"],
];
// Cohort and return events: the first pair the project has.
const RETENTION = [["Signed Up", "Note Created"], ["Signed Up", "Application Opened"], ["Product Viewed", "Product Viewed"]];

const pinKey = (project) => `throughline.mainFunnel.${project}`;

export async function defaults(project) {
  const names = await catalog(project).then((c) => c.names).catch(() => []);
  const has = new Set(names);
  const conversion = CONVERSIONS.find((n) => has.has(n)) || names[0] || "Order Completed";
  let funnel = null;
  try {
    funnel = JSON.parse(localStorage.getItem(pinKey(project)) || "null");
  } catch {
    funnel = null;
  }
  if (!Array.isArray(funnel) || funnel.length < 2) {
    funnel = FUNNELS.map((f) => f.filter((n) => has.has(n))).find((f) => f.length >= 2) || [names[0], conversion].filter(Boolean);
  }
  const [start, ret] = RETENTION.find(([a, b]) => has.has(a) && has.has(b)) || [conversion, conversion];
  // Revenue comes from the segments' number columns, so summing it costs about nothing.
  const value = has.has("Order Completed") ? "revenue" : null;
  return { names, conversion, funnel, retention: { start, ret }, value };
}

export function pinFunnel(project, steps) {
  localStorage.setItem(pinKey(project), JSON.stringify(steps));
}
