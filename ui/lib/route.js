// Hash routing: `#/{project}/{view}?param=value&...` restores a view with every control
// as it was. Parameters are the view's inputs only; an api key never enters a URL.

export function parse(hash = location.hash) {
  const text = hash.replace(/^#\/?/, "");
  const [path, qs = ""] = text.split("?");
  const [project = "", view = ""] = path.split("/").map(decodeURIComponent);
  return { project, view, params: new URLSearchParams(qs) };
}

export function href(project, view, params) {
  const qs = params ? new URLSearchParams(params).toString() : "";
  const path = `#/${encodeURIComponent(project)}/${encodeURIComponent(view)}`;
  return qs ? `${path}?${qs}` : path;
}

/** Records new parameters for the current view without re-rendering it. */
export function replaceParams(params) {
  const { project, view } = parse();
  history.replaceState(null, "", href(project, view, params));
}
