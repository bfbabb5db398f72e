// The admin API with the operator's token: kept in sessionStorage (gone with the tab, never a
// cookie, so no request is ever sent with ambient credentials), sent as a bearer token.

const KEY = "fedstream.token";

export const session = {
  token: () => sessionStorage.getItem(KEY),
  set: (token) => sessionStorage.setItem(KEY, token),
  clear: () => sessionStorage.removeItem(KEY),
};

/** A refusal by the API: its HTTP status and problem+json code and detail. */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

async function request(path, { method = "GET", body, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  const token = session.token();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", `the scheduler did not answer (${e.message})`);
  }
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch { /* not problem+json */ }
    throw new ApiError(response.status, problem.code || "http_error", problem.detail || response.statusText);
  }
  return response;
}

/** The JSON answer to a request (null for 204); throws ApiError. */
export async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

/** The text answer (a Markdown card). */
export async function apiText(path) {
  return (await request(path, { accept: "text/markdown, text/plain" })).text();
}

/** The answer as a Blob (a model download). */
export async function apiBlob(path) {
  return (await request(path, { accept: "application/octet-stream" })).blob();
}

/** The JSON answer, or null when the endpoint or the thing does not exist here (404, 405): a
 * feature this scheduler lacks hides its panel instead of failing the page. */
export async function optional(path) {
  try {
    return await api(path);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null;
    throw e;
  }
}

export const q = encodeURIComponent;
