// The console's only way to the server: same-origin REST calls with the signed-in key. The key lives in this tab's
// sessionStorage only (gone when the tab closes, never in localStorage or a cookie) and is sent only as
// `Authorization: Bearer`. Errors become ApiError with the API's own message (OpenAI's error envelope).

const KEY_STORAGE = "embeddings.apiKey"; // also read by /docs (docs/docs.js) to pre-fill its Authorize dialog

export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0: no answer (network)
    this.code = code;
    this.param = param;
  }
}

export function signedIn() {
  return sessionStorage.getItem(KEY_STORAGE) !== null;
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

/** A mask of the key for display: never the secret part. */
export function maskedKey() {
  const key = sessionStorage.getItem(KEY_STORAGE) || "";
  if (!key) {
    return "no key (server running open)";
  }
  const id = /^sk-([0-9a-f]+)-/i.exec(key);
  return id ? `key ${id[1]}` : `${key.slice(0, 5)}…`;
}

function urlOf(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") {
      url.searchParams.set(name, String(value));
    }
  }
  return url;
}

/**
 * One call: resolves to {data, headers}; rejects with ApiError. `body` is sent as JSON.
 */
export async function request(method, path, { body, query, signal } = {}) {
  const headers = { accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) {
    headers.authorization = `Bearer ${key}`;
  }
  if (body !== undefined) {
    headers["content-type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(urlOf(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") {
      throw err;
    }
    throw new ApiError(0, `The server could not be reached (${err.message}).`, "network_error");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && typeof data === "object" ? data.error : null;
    if (error && typeof error.message === "string") {
      throw new ApiError(response.status, error.message, error.code ?? null, error.param ?? null);
    }
    throw new ApiError(response.status, `The server answered HTTP ${response.status}.`);
  }
  return { data, headers: response.headers };
}

export async function api(method, path, options) {
  return (await request(method, path, options)).data;
}

/** Whether the signed-in key may use admin routes: the API's own answer to an admin read. */
export async function probeAdmin(signal) {
  try {
    await api("GET", "/v1/admin/keys", { query: { tenant: "-" }, signal });
    return true;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 403 || err.status === 401)) {
      return false;
    }
    throw err;
  }
}
