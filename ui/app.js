// The dashboard's shell: sign-in, the project switcher, the navigation and hash routing.
// Each view is its own module (views/index.js lists them) rendered with a context:
//   ctx = { project, view, title, params, main, navigate(params), onLeave(fn) }
// A view reads its inputs from ctx.params, asks the API, and calls ctx.navigate(params)
// when the user changes them (the URL then restores the view).

import { h, fill, field } from "./lib/dom.js";
import { whoami, ApiError } from "./lib/api.js";
import { projects, keyOf, remember, forget } from "./lib/session.js";
import { parse, href } from "./lib/route.js";
import { COMMON } from "./lib/filters.js";
import { disposeCharts } from "./lib/card.js";
import { VIEWS } from "./views/index.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const bar = document.getElementById("project-bar");
const switcher = document.getElementById("project-switch");
let leaving = [];
let rendered = "";

async function boot() {
  wire();
  render();
}

/**
 * `#key=...` (the demo prints such a link): read once, then removed from the address bar
 * and the history entry, so the key stays out of history and is never sent in a URL.
 */
async function signInFromFragment() {
  const key = decodeURIComponent(location.hash.slice("#key=".length).split("&")[0]);
  history.replaceState(null, "", `${location.pathname}#/`);
  try {
    const { project } = await whoami(key);
    remember(project, key);
    history.replaceState(null, "", href(project, "overview"));
    render();
  } catch (e) {
    renderSignIn({ error: signInError(e) });
  }
}

function wire() {
  window.addEventListener("hashchange", render);
  switcher.addEventListener("change", () => {
    const v = switcher.value;
    if (v === "") return;
    const { view, params } = parse();
    location.hash = href(v, VIEWS.some((x) => x.id === view) ? view : "overview", carried(params));
  });
  document.getElementById("add-project").addEventListener("click", () => {
    location.hash = "#/+/signin";
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    const { project } = parse();
    forget(project);
    const next = projects()[0];
    location.hash = next ? href(next.project, "overview") : "#/";
  });
}

/** The shared parameters (date range, filter) carried to another view. */
function carried(params) {
  const out = new URLSearchParams();
  for (const k of COMMON) if (params.get(k)) out.set(k, params.get(k));
  return out;
}

async function render() {
  if (location.hash.startsWith("#key=")) return signInFromFragment();
  const route = parse();
  const signedIn = projects();
  if (route.view === "signin" || signedIn.length === 0) {
    return renderSignIn({});
  }
  if (!route.project || !VIEWS.some((v) => v.id === route.view)) {
    const project = keyOf(route.project) ? route.project : signedIn[0].project;
    history.replaceState(null, "", href(project, "overview", carried(route.params)));
    return render();
  }
  if (!keyOf(route.project)) {
    return renderSignIn({ wanted: route.project, then: location.hash });
  }
  const focusId = document.activeElement?.id;
  const firstView = rendered === "";
  const sameView = rendered === `${route.project}/${route.view}`;
  rendered = `${route.project}/${route.view}`;
  leave();
  const def = VIEWS.find((v) => v.id === route.view);
  renderChrome(route);
  const ctx = {
    project: route.project,
    view: def.id,
    title: def.title,
    params: route.params,
    main,
    navigate(params) {
      location.hash = href(route.project, def.id, params);
    },
    onLeave(fn) {
      leaving.push(fn);
    },
  };
  document.title = `${def.title} · ${route.project} · Throughline`;
  fill(main, h("div.placeholder", { role: "status" }, "Loading…"));
  try {
    const mod = await def.load();
    if (parse().view !== def.id) return; // navigated away meanwhile
    fill(main);
    await mod.render(ctx);
  } catch (e) {
    fill(main, h("div.error", { role: "alert" }, `This view failed to load: ${e.message}`));
    console.error(e);
  }
  const again = focusId && sameView && document.getElementById(focusId);
  if (again) again.focus();
  // Moving to another view puts focus on its heading (not on the first page load, where
  // the first Tab should reach the skip link).
  else if (!sameView && !firstView) main.querySelector("h1")?.focus();
}

function leave() {
  for (const fn of leaving) fn();
  leaving = [];
  disposeCharts();
}

function renderChrome(route) {
  bar.hidden = false;
  nav.hidden = false;
  const list = projects();
  switcher.replaceChildren(
    ...list.map((p) => h("option", { value: p.project, selected: p.project === route.project }, p.project)),
  );
  const keep = carried(route.params);
  fill(
    nav,
    h(
      "ul",
      VIEWS.map((v) =>
        h(
          "li",
          h(
            "a",
            { href: href(route.project, v.id, keep), "aria-current": v.id === route.view ? "page" : null, "data-view": v.id },
            h("span.icon", { "aria-hidden": "true" }, v.icon),
            v.title,
          ),
        ),
      ),
    ),
    h("p.nav-foot", h("a", { href: "/api/v1/openapi.json" }, "API reference (OpenAPI)")),
  );
}

function signInError(e) {
  if (e instanceof ApiError && e.status === 401) {
    return "That api key was not accepted. Use the project's api key (it starts with tl_; the write key, wk_, only sends events). `throughline projects list --data DIR` shows both.";
  }
  return `Sign-in failed: ${e.message}`;
}

function renderSignIn({ error, wanted, then }) {
  leave();
  rendered = "";
  const signedIn = projects();
  bar.hidden = signedIn.length === 0;
  nav.hidden = true;
  if (signedIn.length) {
    switcher.replaceChildren(
      h("option", { value: "", selected: true }, "Choose…"),
      ...signedIn.map((p) => h("option", { value: p.project }, p.project)),
    );
  }
  document.title = "Sign in · Throughline";
  const input = h("input", {
    type: "password", id: "api-key", name: "key", required: true, autocomplete: "off",
    spellcheck: "false", placeholder: "tl_…",
  });
  const message = h("div#signin-error.error", { role: "alert", hidden: !error }, error || "");
  const form = h(
    "form.signin",
    { "aria-labelledby": "signin-title" },
    h("h1#signin-title", { tabindex: "-1" }, wanted ? `Sign in to ${wanted}` : "Sign in"),
    h("p", "Open a project with its api key. The key stays in this browser tab only and is sent to this server as a Bearer header, never in a URL."),
    field("Api key", input),
    message,
    h("button.primary", { type: "submit", id: "signin-submit" }, "Sign in"),
    signedIn.length ? h("p.sub", "Signed in to: ", signedIn.map((p) => p.project).join(", ")) : null,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    message.hidden = true;
    try {
      const { project } = await whoami(key);
      remember(project, key);
      input.value = "";
      const target = then && parse(then).project === project ? then : href(project, "overview");
      if (location.hash === target) render();
      else location.hash = target;
    } catch (err) {
      message.textContent = signInError(err);
      message.hidden = false;
      input.focus();
    }
  });
  fill(main, h("div.signin-wrap", form));
  input.focus();
}

boot();
