// The only way the dashboard reads data: the public JSON API, the same requests any
// client sends (`POST /api/v1/projects/{project}/query/{kind}` with a Bearer api key).
// The dashboard computes no analysis of its own; charts show what these calls answer.

import { keyOf } from "./session.js";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, key, body) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (e) {
    throw new ApiError(0, `the server did not answer (${e.message})`);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    /* not JSON: reported below */
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, data?.error || `HTTP ${resp.status}`);
  }
  return data;
}

/** Which project a key opens (401 for an unknown key). */
export function whoami(key) {
  return call("GET", "/api/v1/whoami", key);
}

const base = (project) => `/api/v1/projects/${encodeURIComponent(project)}`;

function key(project) {
  const k = keyOf(project);
  if (!k) throw new ApiError(401, `not signed in to project ${project}`);
  return k;
}

/** The HTTP request behind a query, as a chart shows it under "Definition". */
export function definition(project, kind, body) {
  return { method: "POST", path: `${base(project)}/query/${kind}`, body };
}

export function query(project, kind, body) {
  return call("POST", `${base(project)}/query/${kind}`, key(project), body);
}

export function person(project, id) {
  return call("GET", `${base(project)}/persons/${encodeURIComponent(id)}`, key(project));
}

export function recent(project, limit) {
  return call("GET", `${base(project)}/events/recent?limit=${limit}`, key(project));
}

const catalogs = new Map();
/** The project's event names, campaigns and channels, fetched once per page load. */
export function catalog(project) {
  if (!catalogs.has(project)) {
    const p = call("GET", `${base(project)}/catalog`, key(project));
    p.catch(() => catalogs.delete(project));
    catalogs.set(project, p);
  }
  return catalogs.get(project);
}

/** The project's journeys with their counts (`GET .../journeys`). */
export function journeys(project) {
  return call("GET", `${base(project)}/journeys`, key(project));
}

/** The request behind the journeys list, as a card shows it. */
export function journeysDefinition(project) {
  return { method: "GET", path: `${base(project)}/journeys` };
}

/** Pauses or resumes a journey (`POST .../journeys/{name}/pause|resume`). */
export function journeyAction(project, name, action) {
  return call("POST", `${base(project)}/journeys/${encodeURIComponent(name)}/${action}`, key(project));
}
