// The public API, as the page uses it: the key (typed once, kept in this tab's sessionStorage)
// goes as an Authorization: Bearer header to this service only, never in a URL, and never to
// another origin (presigned S3 artifact URLs get no header).
export const base = location.pathname.replace(/\/studio\/?$/, "");
const KEY = "meshline-key";

export function getKey() { return sessionStorage.getItem(KEY) || ""; }
export function setKey(value) { sessionStorage.setItem(KEY, value); }

function sameOrigin(url) { return new URL(url, location.href).origin === location.origin; }
function withBase(path) { return /^[a-z]+:\/\//i.test(path) ? path : base + path; }
function headersFor(url, extra = {}) {
  const key = getKey();
  return key && sameOrigin(url) ? { ...extra, Authorization: "Bearer " + key } : { ...extra };
}

export class ApiError extends Error {
  constructor(status, message, type) { super(message); this.status = status; this.type = type; }
  // What the person should do about it: a clear line for missing / refused keys.
  get hint() {
    if (this.status === 401) return getKey() ? "This API key is not accepted: check it and press Use key." : "This meshline needs an API key: type it above and press Use key.";
    if (this.status === 403) return "This API key may not do that (it lacks the scope or admin rights): " + this.message;
    return `${this.status}: ${this.message}`;
  }
}

async function fail(response) {
  let message = response.statusText, type;
  try { const body = await response.json(); message = body.error.message; type = body.error.type; } catch (_) { /* not our error shape */ }
  const error = new ApiError(response.status, message, type);
  window.dispatchEvent(new CustomEvent("meshline-api-error", { detail: error }));
  throw error;
}

export async function request(path, options = {}) {
  const url = withBase(path);
  const response = await fetch(url, { ...options, headers: headersFor(url, options.headers) });
  if (!response.ok) await fail(response);
  return response;
}
export async function api(path, options = {}) { return (await request(path, options)).json(); }
export async function postJson(path, body) {
  return api(path, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
}
export async function blob(path) { return (await request(path)).blob(); }

// Server-Sent Events read with fetch() streaming (EventSource cannot send headers).
export async function readEvents(path, onEvent, signal) {
  const response = await request(path, { headers: { Accept: "text/event-stream" }, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message"; const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;  // keep-alive
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        if (field === "event") event = text; else if (field === "data") data.push(text);
      }
      if (data.length && onEvent(event, data.join("\n")) === false) { reader.cancel(); return; }
    }
  }
}

// Follow a job to its end: `onJob` gets every state; resolves with the last one. Reconnects
// (the stream may be cut by a proxy) until the job ends or `signal` aborts.
export async function followJob(jobId, onJob, signal) {
  let last = null;
  for (let delay = 500; !signal?.aborted; delay = Math.min(delay * 2, 5000)) {
    try {
      let ended = false;
      await readEvents(`/v1/jobs/${jobId}/events`, (event, data) => {
        if (event === "job") { last = JSON.parse(data); onJob(last); }
        if (event === "end" || event === "gone") { ended = true; return false; }
      }, signal);
      if (ended || ["succeeded", "failed", "cancelled"].includes(last?.status)) return last;
    } catch (err) {
      if (signal?.aborted) return last;
      if (err instanceof ApiError && err.status < 500 && err.status !== 429) throw err;
    }
    await new Promise(r => setTimeout(r, delay));
  }
  return last;
}

// Save a file the API serves (the key goes as a header, so a plain link cannot fetch it).
export async function download(url, name) {
  const data = await (await request(url)).blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(data);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// COCO RLE ({size: [h, w], counts: string | number[]}, column-major) → Uint8Array(h * w), row-major.
export function decodeRle(rle) {
  const [h, w] = rle.size;
  let counts = rle.counts;
  if (typeof counts === "string") {
    const out = []; let p = 0;
    while (p < counts.length) {
      let x = 0, k = 0, more = 1, c;
      while (more) { c = counts.charCodeAt(p) - 48; x |= (c & 0x1f) << (5 * k); more = c & 0x20; p++; k++; if (!more && (c & 0x10)) x |= -1 << (5 * k); }
      if (out.length > 2) x += out[out.length - 2];
      out.push(x);
    }
    counts = out;
  }
  const mask = new Uint8Array(h * w);
  let index = 0, value = 0;
  for (const run of counts) {
    if (value) for (let i = index; i < index + run; i++) mask[(i % h) * w + Math.floor(i / h)] = 1;
    index += run; value ^= 1;
  }
  return mask;
}

// A mask (Uint8Array, row-major) drawn onto a canvas context in a colour; returns its area.
// ``band`` > 0: the pixels within that many of the mask's edge are opaque over the translucent
// fill, so a mask stays visible on a photo of its own colour; they lie inside the mask, so the
// painted pixels are still exactly the mask's.
export function paintMask(ctx, mask, width, height, rgb, alpha = 120, band = 0) {
  const image = ctx.getImageData(0, 0, width, height);
  const edge = band > 0 ? innerEdge(mask, width, height, band) : null;
  let area = 0;
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    area++;
    image.data.set([rgb[0], rgb[1], rgb[2], edge?.[i] ? 255 : alpha], i * 4);
  }
  ctx.putImageData(image, 0, 0);
  return area;
}

// The pixels of ``mask`` (row-major, width × height) within ``band`` pixels of its edge (or
// of the image's): the mask less its erosion by a (2 band + 1)² square, done as two running
// counts (along rows, then columns), linear in the pixels whatever the band.
export function innerEdge(mask, width, height, band) {
  const span = 2 * band + 1, rows = new Uint8Array(mask.length), edge = new Uint8Array(mask.length);
  for (let y = 0; y < height; y++) {
    let count = 0;
    for (let x = 0; x < width + band; x++) {
      if (x < width && mask[y * width + x]) count++;
      if (x - span >= 0 && mask[y * width + x - span]) count--;
      const centre = x - band;
      if (centre >= 0) rows[y * width + centre] = centre >= band && centre < width - band && count === span ? 1 : 0;
    }
  }
  for (let x = 0; x < width; x++) {
    let count = 0;
    for (let y = 0; y < height + band; y++) {
      if (y < height) count += rows[y * width + x];
      if (y - span >= 0) count -= rows[(y - span) * width + x];
      const centre = y - band;
      if (centre >= 0) {
        const i = centre * width + x;
        const kept = centre >= band && centre < height - band && count === span;
        edge[i] = mask[i] && !kept ? 1 : 0;
      }
    }
  }
  return edge;
}

export const COLOURS = [[30, 144, 255], [255, 99, 71], [50, 205, 50], [238, 130, 238], [255, 215, 0], [0, 206, 209], [255, 140, 0], [147, 112, 219]];

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}
