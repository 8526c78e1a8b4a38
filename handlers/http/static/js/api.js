// Talking to the easel API: the token (kept in localStorage), JSON calls, errors, authenticated images.

const TOKEN_KEY = "easel.token";

export const auth = {
  get token() { return localStorage.getItem(TOKEN_KEY) || ""; },
  set(token) { localStorage.setItem(TOKEN_KEY, token); },
  clear() { localStorage.removeItem(TOKEN_KEY); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

// Listeners told when the server rejects the token (the page goes back to sign-in).
const onUnauthorized = [];
export function whenUnauthorized(fn) { onUnauthorized.push(fn); }

export function authHeaders() {
  return { Authorization: `Bearer ${auth.token}` };
}

function detailOf(data, res) {
  const detail = data && typeof data === "object" ? data.detail : data;
  if (typeof detail === "string" && detail) return detail;
  if (detail) return JSON.stringify(detail);
  return `${res.status} ${res.statusText || "error"}`;
}

export async function api(path, { method = "GET", json, body, signal } = {}) {
  const headers = authHeaders();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the server (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!res.ok) {
    const err = new ApiError(res.status, detailOf(data, res));
    if (res.status === 401) onUnauthorized.forEach((fn) => fn(err));
    throw err;
  }
  return data;
}

// Our own /files/ URLs need the token, which an <img src> cannot send: fetch them and hand out blob: URLs.
// Signed URLs of another origin (S3) are used as they are.
export async function imageUrl(url) {
  return (await fetchImage(url)).src;
}

// { src, blob }: the blob when the page could read the bytes (our own /files/), else null (a signed URL).
export async function fetchImage(url) {
  if (url.startsWith("data:") || url.startsWith("blob:")) return { src: url, blob: null };
  const u = new URL(url, location.href);
  if (u.origin !== location.origin && !u.pathname.startsWith("/files/")) return { src: url, blob: null };
  const res = await fetch(u.pathname + u.search, { headers: authHeaders() });
  if (!res.ok) throw new ApiError(res.status, `cannot load ${u.pathname} (${res.status})`);
  const blob = await res.blob();
  return { src: URL.createObjectURL(blob), blob };
}

// Upload a File/Blob as the raw body, with progress (fetch has no upload progress; XMLHttpRequest does).
export function upload(path, body, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${auth.token}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let data = null;
      try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { data = xhr.responseText; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, detailOf(data, { status: xhr.status, statusText: xhr.statusText })));
    };
    xhr.onerror = () => reject(new ApiError(0, "the upload was interrupted (network error)"));
    xhr.send(body);
  });
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatTime(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}
