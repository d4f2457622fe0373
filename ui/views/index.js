// The dashboard's views, in navigation order. One module per view: to add a view, write
// views/NAME.js exporting `render(ctx)` (see app.js for ctx) and add one line here.

export const VIEWS = [
  { id: "overview", title: "Overview", icon: "◎", load: () => import("./overview.js") },
  { id: "funnel", title: "Funnels", icon: "▽", load: () => import("./funnel.js") },
  { id: "journeys", title: "Journeys", icon: "⇶", load: () => import("./journeys.js") },
  { id: "attribution", title: "Attribution", icon: "▥", load: () => import("./attribution.js") },
  { id: "retention", title: "Retention", icon: "▦", load: () => import("./retention.js") },
  { id: "assets", title: "Assets", icon: "☰", load: () => import("./assets.js") },
  { id: "emotion", title: "Emotion", icon: "♡", load: () => import("./emotion.js") },
  { id: "fatigue", title: "Fatigue", icon: "≋", load: () => import("./fatigue.js") },
  { id: "audit", title: "Audit", icon: "⚑", load: () => import("./audit.js") },
  { id: "followups", title: "Follow-ups", icon: "✉", load: () => import("./followups.js") },
  { id: "person", title: "People", icon: "☺", load: () => import("./person.js") },
];
