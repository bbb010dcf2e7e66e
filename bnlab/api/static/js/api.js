// Calls to the bnlab API. Every call carries the token the user typed in the header, if any.

const TOKEN_KEY = "bnlab.token";

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(extra = {}) {
  const value = token();
  return value ? { ...extra, Authorization: `Bearer ${value}` } : { ...extra };
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  // FastAPI answers an unknown path with exactly this: the route is not in this service.
  get missingRoute() {
    return this.status === 404 && this.message === "Not Found";
  }
}

export async function request(method, path, body) {
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, `the service did not answer (${error.message})`);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, describe(response.status, data));
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const patch = (path, body) => request("PATCH", path, body);

function describe(status, data) {
  const detail = data && data.detail;
  if (status === 401) {
    const why = typeof detail === "string" ? `${detail}. ` : "";
    return `${why}Put the service's API token in the field at the top right.`;
  }
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    // FastAPI's 422: [{loc: ["body", "learning_rate"], msg: "..."}, ...]
    return detail
      .map((error) => {
        const where = (error.loc || []).filter((part) => part !== "body").join(".");
        return where ? `${where}: ${error.msg}` : error.msg;
      })
      .join("; ");
  }
  return `the service answered HTTP ${status}`;
}

// An object URL for an image the API serves, or null if it has none (any non-200).
// Fetched rather than put in <img src>, so that the token goes along.
export async function imageUrl(path) {
  try {
    const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) return null;
    return URL.createObjectURL(await response.blob());
  } catch {
    return null;
  }
}
