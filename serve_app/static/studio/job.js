// Make the 3D asset: the job's options, POST /v1/jobs (the chosen mask as the job's `mask`, or
// the prompt), live per-stage progress from the job's SSE stream, cancel; when it ends, the
// result view: the masks it used over its photo, 3D viewer, turntable preview, physics sidecar,
// every artifact to download (one by one, or all in one zip).
import { ApiError, COLOURS, api, base, blob, decodeRle, download, el, followJob, paintMask } from "./api.js";
import { createViewer } from "./viewer.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

export function initJob({ say }) {
  const $ = id => document.getElementById(id);
  let source = null, following = null, current = null, viewer = null, masksShown = "";

  function options(withMask, prompt) {
    const checked = name => [...document.querySelectorAll(`input[name="${name}"]:checked`)].map(i => i.value);
    let stages = checked("stage");
    if (withMask) stages = stages.filter(s => s !== "segment");
    const body = {
      stages,
      formats: checked("format"),
      collision: $("collision").checked,
      preview: $("preview").checked,
      sim: {
        size_m: Number($("size-m").value),
        size_axis: $("size-axis").value,
        up_axis: $("up-axis").value,
        decomposition: $("decomposition").checked,
        max_parts: Number($("max-parts").value),
      },
    };
    if ($("texture-size").value) body.texture_size = Number($("texture-size").value);
    if (!withMask && prompt) body.prompt = prompt;
    return body;
  }

  $("job-form").addEventListener("submit", async e => {
    e.preventDefault();
    const file = source?.file();
    if (!file) { say("Choose a photo first."); return; }
    const mask = $("job-input").value === "mask" ? await source.maskPng() : null;
    if ($("job-input").value === "mask" && !mask) say("No mask chosen yet: the job segments on the server with the prompt (or the image centre).", true);
    const form = new FormData();
    form.append("image", file, file.name);
    if (mask) form.append("mask", mask, "mask.png");
    form.append("options", JSON.stringify(options(Boolean(mask), source.prompt())));
    $("submit-job").disabled = true;
    try {
      const accepted = await api("/v1/jobs", { method: "POST", body: form });
      open(accepted.job_id);
    } catch (err) {
      say("The job was not accepted: " + (err.hint || err.message));
    } finally { $("submit-job").disabled = false; }
  });

  $("cancel-job").addEventListener("click", async () => {
    if (!current) return;
    try { render(await api(`/v1/jobs/${current}/cancel`, { method: "POST" })); }
    catch (err) { say("cancel failed: " + (err.hint || err.message)); }
  });

  // Show a job (new, or reopened from the history) and follow it until it ends.
  async function open(jobId) {
    following?.abort();
    following = new AbortController();
    current = jobId;
    masksShown = "";
    $("mask-figure").hidden = true;
    window.history.replaceState(null, "", "#job=" + encodeURIComponent(jobId));
    $("job").hidden = false;
    $("result").hidden = true;
    $("job-id").textContent = jobId;
    $("stages").tBodies[0].replaceChildren();
    $("job-error").textContent = "";
    let last = null;
    try {
      last = await api(`/v1/jobs/${jobId}`);
      render(last);
      if (!TERMINAL.includes(last.status)) last = await followJob(jobId, render, following.signal) || last;
    } catch (err) {
      if (err instanceof ApiError && current === jobId) $("job-error").textContent = err.hint;
      return;
    }
    if (current !== jobId || !last) return;
    render(last);
    if (last.status === "succeeded") showResult(last);
  }

  function render(job) {
    if (job.job_id !== current) return;
    const section = $("job");
    section.dataset.status = job.status;
    section.dataset.progress = String(Math.round(job.progress));
    $("job-status").textContent = `${job.status} · ${Math.round(job.progress)} %`;
    $("job-status").className = "status-" + job.status;
    $("job-bar").style.width = `${job.progress}%`;
    $("job-bar").parentElement.className = "bar " + job.status;
    $("cancel-job").disabled = TERMINAL.includes(job.status);
    $("stages").tBodies[0].replaceChildren(...job.stages.flatMap(s => {
      const row = el("tr", { "data-stage": s.name, "data-status": s.status },
        el("td", {}, s.name),
        el("td", { class: "status-" + s.status }, s.status + (s.attempts > 1 ? ` (attempt ${s.attempts})` : "")),
        el("td", {}, el("div", { class: "bar " + s.status, role: "progressbar", "aria-label": s.name, "aria-valuenow": String(Math.round(s.progress)), "aria-valuemin": "0", "aria-valuemax": "100" },
          el("span", { style: `width:${s.progress}%` }))),
        el("td", {}, s.seconds != null ? `${s.seconds.toFixed(1)} s` : ""));
      return s.error ? [row, el("tr", { class: "stage-error" }, el("td", { colspan: "4", class: "error" }, `${s.name} failed: ${s.error}`))] : [row];
    }));
    $("job-error").textContent = job.error || "";
    // The masks as soon as they exist (an uploaded one at once, the segment stage's when it
    // ends): a wrong mask can be cancelled before the 3D stages run on it.
    const masks = job.artifacts.filter(a => MASK_ARTIFACT.test(a.name) || a.name === job.inputs?.mask).map(a => a.name).join();
    if (masks && masks !== masksShown) {
      masksShown = masks;
      showMasks(job).catch(err => { if (job.job_id === current) $("mask-caption").textContent = "masks: " + (err.hint || err.message); });
    }
  }

  // --- the result ---------------------------------------------------------------------------
  function href(url) { return /^[a-z]+:\/\//i.test(url) ? url : base + url; }
  function pick(artifacts, ...names) {
    for (const name of names) {
      const found = artifacts.find(a => a.name === name) || artifacts.find(a => a.name.endsWith("_" + name));
      if (found) return found;
    }
    return null;
  }

  // Every await may end after another job was opened (its files were slow): each is followed
  // by a check, so a job left behind never writes into the one now shown.
  async function showResult(job) {
    const artifacts = job.artifacts, stale = () => job.job_id !== current;
    $("result").hidden = false;
    const zip = $("download-zip"), zipUrl = `/v1/jobs/${job.job_id}/artifacts.zip`;
    zip.href = base + zipUrl;
    zip.onclick = e => { e.preventDefault(); download(zipUrl, `meshline-${job.job_id}.zip`).catch(err => say("download failed: " + (err.hint || err.message))); };
    $("downloads").replaceChildren(...artifacts.map(a => el("li", {},
      el("a", { href: href(a.url), "data-name": a.name, download: a.name, onclick: e => { e.preventDefault(); download(a.url, a.name).catch(err => say("download failed: " + (err.hint || err.message))); } }, a.name),
      el("span", { class: "muted" }, ` ${(a.bytes / 1024).toFixed(1)} KB`))));

    const preview = pick(artifacts, "preview.gif", "thumbnail.png");
    $("preview-img").closest("figure").hidden = !preview;
    if (preview) {
      const image = await blob(preview.url);
      if (stale()) return;
      $("preview-img").src = URL.createObjectURL(image);
    }

    const sidecar = pick(artifacts, "object.json");
    const physics = sidecar ? await api(sidecar.url) : null;
    if (stale()) return;
    $("physics").tBodies[0].replaceChildren(...(physics ? physicsRows(physics) : [el("tr", {}, el("td", { class: "muted" }, "no physics sidecar (sim off or convert not run)"))]));

    const model = pick(artifacts, "visual.glb", "textured.glb");
    // No mesh at all (a segment-only job): no viewer, just why.
    const meshless = !model && !artifacts.some(a => /\.(obj|stl|ply|usdz?)$/.test(a.name));
    $("result").dataset.meshless = String(meshless);
    if (meshless) { $("viewer-status").textContent = "This job made no mesh (its stages: " + job.stages.map(s => s.name).join(", ") + ")."; return; }
    viewer ??= createViewer($("viewer"));
    const collision = pick(artifacts, "collision_parts.glb", "collision.stl");
    $("show-collision").disabled = !collision;
    $("show-collision").checked = false;
    $("viewer-status").textContent = "loading the model…";
    try {
      if (!model) throw new Error("no GLB among the artifacts (add GLB to the formats)");
      const upAxis = job.options?.sim ? job.options.sim.up_axis : "y";
      const glb = await (await blob(model.url)).arrayBuffer();
      if (stale()) return;
      await viewer.showModel(glb, upAxis);
      if (stale()) return;
      if (collision) {
        const parts = await (await blob(collision.url)).arrayBuffer();
        if (stale()) return;
        await viewer.setCollision(parts, collision.name.endsWith(".stl") ? "stl" : "glb");
        if (stale()) return;
      }
      $("viewer-status").textContent = `${model.name}${collision ? ` · collision: ${collision.name}` : ""}`;
      $("viewer").dataset.loaded = "1";
    } catch (err) { if (!stale()) $("viewer-status").textContent = "viewer: " + (err.hint || err.message); }
  }
  $("show-collision").addEventListener("change", e => viewer?.showCollision(e.target.checked));
  $("reset-view").addEventListener("click", () => viewer?.reset());

  // --- the masks the job used, over its input photo -------------------------------------------
  // The segment stage's (mask_rle.json, or obj<k>_mask_rle.json per object: exact, COCO RLE),
  // else the uploaded mask. A photo is drawn at most MASK_VIEW_PX on its long side: a 40 MP one
  // is sampled, never painted whole.
  const MASK_VIEW_PX = 1600;
  const MASK_ARTIFACT = /^(obj\d+_)?mask_rle\.json$/;
  let maskDrawing = 0, photoOf = { key: "", bitmap: null };
  const objectIndex = name => Number(/^obj(\d+)_/.exec(name)?.[1] ?? -1);

  async function showMasks(job) {
    const figure = $("mask-figure"), overlay = $("job-mask"), photo = $("job-photo"), boxes = $("job-boxes");
    const drawing = ++maskDrawing;
    delete overlay.dataset.masks;
    delete boxes.dataset.boxes;
    const byName = new Map(job.artifacts.map(a => [a.name, a]));
    const input = byName.get(job.inputs?.image);
    const rles = job.artifacts.filter(a => MASK_ARTIFACT.test(a.name))
      .sort((a, b) => objectIndex(a.name) - objectIndex(b.name));
    const uploaded = rles.length ? null : byName.get(job.inputs?.mask);
    figure.hidden = !input || !(rles.length || uploaded);
    if (figure.hidden) return;
    // Fetched and decoded once per job (the masks are drawn again as objects arrive); a
    // failed fetch is not kept, so the next draw tries again.
    const key = `${job.job_id}/${input.name}`;
    if (photoOf.key !== key) {
      const bitmap = blob(input.url).then(file => createImageBitmap(file, { colorSpaceConversion: "none" }));
      bitmap.catch(() => { if (photoOf.key === key) photoOf = { key: "", bitmap: null }; });
      photoOf = { key, bitmap };
    }
    // After every await: another job opened, or a newer draw begun, meanwhile leaves the canvases
    // alone (resizing them clears them).
    const stale = () => job.job_id !== current || drawing !== maskDrawing;
    const bitmap = await photoOf.bitmap;
    if (stale()) return;
    const scale = Math.min(1, MASK_VIEW_PX / Math.max(bitmap.width, bitmap.height));
    const width = Math.max(1, Math.round(bitmap.width * scale)), height = Math.max(1, Math.round(bitmap.height * scale));
    for (const canvas of [photo, overlay, boxes]) { canvas.width = width; canvas.height = height; }
    photo.getContext("2d").drawImage(bitmap, 0, 0, width, height);
    const masks = rles.length
      ? await Promise.all(rles.map(async a => sampled(decodeRle(await api(a.url)), bitmap.width, bitmap.height, width, height)))
      : [await pngMask(await blob(uploaded.url), width, height)];
    // A detect job's k-th mask came from the detector's k-th box (detections.json).
    const found = rles.length && byName.has("detections.json") ? await api(byName.get("detections.json").url) : null;
    if (stale()) return;
    const ctx = overlay.getContext("2d");
    // The edge band about 1 % of the view wide: the canvas is shown a few hundred pixels wide.
    const band = Math.max(1, Math.round(width / 150));
    const areas = masks.map((mask, i) => paintMask(ctx, mask, width, height, COLOURS[i % COLOURS.length], 110, band));
    overlay.dataset.masks = String(masks.length);
    overlay.dataset.area = String(areas.reduce((a, b) => a + b, 0));
    if (found) drawBoxes(boxes, found, masks.length, scale);
    const what = uploaded ? `the uploaded mask (${uploaded.name})`
      : masks.length === 1 ? `the segment stage's mask (${rles[0].name.replace("_rle.json", ".png")})`
      : `${masks.length} objects' masks (a colour each)`;
    const detected = found ? `, from ${found.boxes.length} detection${found.boxes.length === 1 ? "" : "s"}` : "";
    $("mask-caption").textContent = `${what}${detected} over ${input.name}` + (scale < 1 ? ` (shown at ${Math.round(scale * 100)} %)` : "");
  }

  // The first ``count`` detections' boxes, each in its mask's colour, named and scored. Line and
  // text sizes follow the canvas, which the page shows a few hundred pixels wide.
  function drawBoxes(canvas, found, count, scale) {
    const ctx = canvas.getContext("2d"), unit = Math.max(1, canvas.width / 300);
    ctx.lineWidth = 2 * unit;
    ctx.font = `${Math.round(9 * unit)}px sans-serif`;
    ctx.textBaseline = "bottom";
    const shown = found.boxes.slice(0, count);
    shown.forEach(([x1, y1, x2, y2], k) => {
      const [r, g, b] = COLOURS[k % COLOURS.length];
      ctx.strokeStyle = ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
      ctx.strokeRect(x1 * scale, y1 * scale, (x2 - x1) * scale, (y2 - y1) * scale);
      const label = `${found.class_names?.[k] ?? found.class_ids?.[k] ?? "object"} ${(found.scores?.[k] ?? 0).toFixed(2)}`;
      ctx.fillText(label, x1 * scale + ctx.lineWidth, Math.max(ctx.lineWidth + 9 * unit, y1 * scale - ctx.lineWidth));
    });
    canvas.dataset.boxes = String(shown.length);
  }

  // A row-major mask of w × h, sampled to the view's size (nearest pixel).
  function sampled(mask, w, h, width, height) {
    if (w === width && h === height) return mask;
    const out = new Uint8Array(width * height);
    for (let y = 0; y < height; y++) {
      const row = Math.min(h - 1, Math.floor((y + 0.5) * h / height)) * w;
      for (let x = 0; x < width; x++) out[y * width + x] = mask[row + Math.min(w - 1, Math.floor((x + 0.5) * w / width))];
    }
    return out;
  }

  // An uploaded mask image at the view's size, as the server reads it: grey level > 127.
  async function pngMask(file, width, height) {
    const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const ctx = new OffscreenCanvas(width, height).getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(bitmap, 0, 0, width, height);
    const rgba = ctx.getImageData(0, 0, width, height).data, out = new Uint8Array(width * height);
    for (let i = 0; i < out.length; i++) out[i] = 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2] > 127 ? 1 : 0;
    return out;
  }

  function physicsRows(sidecar) {
    const rows = [];
    const fmt = v => typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : Array.isArray(v) ? "[" + v.map(fmt).join(", ") + "]" : String(v);
    const add = (key, value) => {
      if (value && typeof value === "object" && !Array.isArray(value)) { for (const [k, v] of Object.entries(value)) add(`${key}.${k}`, v); return; }
      if (Array.isArray(value) && JSON.stringify(value).length > 120) return;
      rows.push(el("tr", { "data-key": key }, el("th", { scope: "row" }, key), el("td", {}, fmt(value))));
    };
    for (const [k, v] of Object.entries(sidecar)) add(k, v);
    return rows;
  }

  return { setSource: s => { source = s; }, open };
}
