// The signed-in projects of this browser tab: {project, key} pairs in sessionStorage, so
// keys die with the tab. A key is only ever sent as a Bearer header (lib/api.js): never
// in a URL, never in localStorage, never logged.

const KEY = "throughline.projects";

export function projects() {
  try {
    const list = JSON.parse(sessionStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list.filter((p) => p && p.project && p.key) : [];
  } catch {
    return [];
  }
}

export function keyOf(project) {
  return projects().find((p) => p.project === project)?.key ?? null;
}

export function remember(project, key) {
  const list = projects().filter((p) => p.project !== project);
  list.push({ project, key });
  list.sort((a, b) => a.project.localeCompare(b.project));
  sessionStorage.setItem(KEY, JSON.stringify(list));
}

export function forget(project) {
  sessionStorage.setItem(KEY, JSON.stringify(projects().filter((p) => p.project !== project)));
}
