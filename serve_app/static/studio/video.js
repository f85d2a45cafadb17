// Video: upload (POST /v1/videos), scrub the stored frames, prompt objects on any frame
// (POST …/prompts), propagate (a job: its SSE stream gives the progress), scrub again with every
// object's mask in its own colour, export (COCO JSON, PNG zip).
import { ApiError, COLOURS, api, base, blob, decodeRle, download, followJob, paintMask, postJson } from "./api.js";

export function initVideo({ say }) {
  const $ = id => document.getElementById(id);
  const frame = $("video-frame"), overlay = $("video-overlay"), scrub = $("scrub");
  let video = null, masks = new Map(), frames = new Map(), points = new Map(), shown = -1, following = null;

  function status(text) { $("video-status").textContent = text; }

  $("video-file").addEventListener("change", async e => {
    const file = e.target.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("video", file, file.name);
    status(`uploading and decoding ${file.name}…`);
    try {
      const meta = await api("/v1/videos", { method: "POST", body: form });
      open(meta);
    } catch (err) { status("upload failed: " + (err.hint || err.message)); }
  });

  function open(meta) {
    following?.abort();
    video = meta; masks = new Map(); frames = new Map(); points = new Map(); shown = -1;
    for (const canvas of [frame, overlay]) { canvas.width = meta.width; canvas.height = meta.height; }
    scrub.max = String(meta.frames - 1); scrub.value = "0"; scrub.disabled = false;
    $("propagate").disabled = false;
    $("video-bar").style.width = "0";
    delete $("video-bar").dataset.progress;
    for (const a of [$("export-coco"), $("export-png")]) a.href = `${base}/v1/videos/${meta.video_id}/export?format=${a.dataset.format}`;
    document.body.dataset.video = meta.video_id;
    window.history.replaceState(null, "", "#video=" + encodeURIComponent(meta.video_id));
    status(`${meta.video_id}: ${meta.frames} frames, ${meta.width} × ${meta.height}${meta.fps ? `, ${meta.fps} fps` : ""}. Click the object on any frame.`);
    show(0);
  }

  // Per video (open() replaces both maps); a failed fetch is not kept, so the next look tries again.
  async function frameImage(index) {
    if (!frames.has(index)) {
      const cache = frames;
      cache.set(index, blob(`/v1/videos/${video.video_id}/frames/${index}`).then(b => createImageBitmap(b)).catch(err => {
        cache.delete(index); throw err;
      }));
    }
    return frames.get(index);
  }
  async function frameMasks(index) {
    if (!masks.has(index)) {
      const cache = masks;
      cache.set(index, api(`/v1/videos/${video.video_id}/frames/${index}/masks`).catch(err => {
        if (err instanceof ApiError && err.status === 404) return {};
        cache.delete(index); throw err;
      }));
    }
    return masks.get(index);
  }

  // Every await below may end after another video was opened (both start at frame 0): each is
  // followed by a check of the video it began with.
  async function show(index) {
    if (!video) return;
    const v = video;
    shown = index;
    $("frame-label").textContent = `${index + 1} / ${video.frames}`;
    const [image, objects] = await Promise.all([frameImage(index), frameMasks(index)]);
    if (video !== v || shown !== index) return;
    frame.getContext("2d").drawImage(image, 0, 0);
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, video.width, video.height);
    let area = 0;
    const band = Math.max(1, Math.round(video.width / 300));  // shown ~640 px wide
    for (const [obj, rle] of Object.entries(objects)) area += paintMask(ctx, decodeRle(rle), video.width, video.height, COLOURS[Number(obj) % COLOURS.length], 140, band);
    for (const [key, list] of points) {
      const [f, obj] = key.split(":").map(Number);
      if (f !== index) continue;
      for (const p of list) { ctx.beginPath(); ctx.arc(p[0], p[1], 4, 0, 2 * Math.PI); ctx.fillStyle = p[2] ? `rgb(${COLOURS[obj % COLOURS.length]})` : "#f04438"; ctx.fill(); ctx.strokeStyle = "#fff"; ctx.stroke(); }
    }
    overlay.dataset.frame = String(index);
    overlay.dataset.objects = String(Object.keys(objects).length);
    overlay.dataset.area = String(area);
  }
  scrub.addEventListener("input", () => show(Number(scrub.value)));

  frame.addEventListener("click", async e => {
    if (!video) return;
    const rect = frame.getBoundingClientRect();
    const x = Math.round((e.clientX - rect.left) * video.width / rect.width), y = Math.round((e.clientY - rect.top) * video.height / rect.height);
    prompt(x, y, e.shiftKey ? 0 : 1);
  });
  frame.addEventListener("keydown", e => {  // keyboard: Enter prompts the frame's centre
    if (e.key === "Enter" && video) prompt(Math.round(video.width / 2), Math.round(video.height / 2), e.shiftKey ? 0 : 1);
  });

  async function prompt(x, y, label) {
    const v = video, mine = points;  // the answer is for this video: dropped if another is opened
    const index = Number(scrub.value), obj = Number($("obj-id").value);
    const key = `${index}:${obj}`;
    const list = [...(points.get(key) || []), [x, y, label]];
    points.set(key, list);
    status(`object ${obj} on frame ${index + 1}…`);
    try {
      const answer = await postJson(`/v1/videos/${v.video_id}/prompts`, {
        frame_idx: index, obj_id: obj, points: list.map(p => [p[0], p[1]]), labels: list.map(p => p[2]),
      });
      if (video !== v) return;
      const current = await frameMasks(index);
      if (video !== v) return;
      masks.set(index, Promise.resolve({ ...current, [String(obj)]: answer.rle }));
      status(`object ${obj} on frame ${index + 1}: ${answer.area} px in ${(answer.seconds * 1000).toFixed(0)} ms. Propagate when every object is prompted.`);
      show(index);
    } catch (err) {
      mine.set(key, list.slice(0, -1));
      if (video === v) status("prompt failed: " + (err.hint || err.message));
    }
  }

  $("new-object").addEventListener("click", () => {
    const used = new Set([...points.keys()].map(k => Number(k.split(":")[1])));
    let next = 1; while (used.has(next)) next++;
    $("obj-id").value = String(next);
  });

  $("propagate").addEventListener("click", async () => {
    if (!video) return;
    following?.abort();
    const v = video, ctrl = following = new AbortController();
    const bar = $("video-bar");
    $("propagate").disabled = true;
    // Another video opened (or Propagate pressed again) meanwhile: this run writes nothing more.
    const stale = () => video !== v || ctrl.signal.aborted;
    try {
      const accepted = await postJson(`/v1/videos/${v.video_id}/propagate`, { direction: "both" });
      if (stale()) return;
      status("propagating…");
      const job = await followJob(accepted.job_id, job => {
        if (stale()) return;
        const stage = job.stages[0] || {};
        const detail = stage.detail || {};
        const pct = detail.frames ? 100 * (detail.frames_done || 0) / detail.frames : job.progress;
        bar.style.width = `${pct}%`;
        bar.dataset.progress = String(Math.round(job.status === "succeeded" ? 100 : pct));
        status(`propagating: ${detail.frames_done ?? "…"} / ${detail.frames ?? "…"} frames${detail.fps ? `, ${Number(detail.fps).toFixed(1)} fps` : ""}`);
        if (job.status === "failed") status("propagation failed: " + (stage.error || job.error));
      }, ctrl.signal);
      if (stale()) return;
      if (job?.status === "succeeded") {
        bar.style.width = "100%"; bar.dataset.progress = "100";
        masks = new Map();  // read the propagated masks afresh
        status("propagated: scrub to see every object's mask.");
        show(Number(scrub.value));
      } else if (job) status(`propagation ${job.status}${job.error ? ": " + job.error : ""}`);
    } catch (err) { if (!stale()) status("propagate failed: " + (err.hint || err.message)); }
    finally { if (video === v) $("propagate").disabled = false; }
  });

  for (const a of [$("export-coco"), $("export-png")]) {
    a.addEventListener("click", e => {
      e.preventDefault();
      if (!video) { say("Upload a video first."); return; }
      const name = `${video.video_id}.${a.dataset.format === "coco" ? "coco.json" : "masks.zip"}`;
      download(`/v1/videos/${video.video_id}/export?format=${a.dataset.format}`, name).catch(err => say("export failed: " + (err.hint || err.message)));
    });
  }

  async function reopen(videoId) {
    try { open(await api(`/v1/videos/${videoId}`)); } catch (err) { say("cannot open the video: " + (err.hint || err.message)); }
  }
  return { open, reopen };
}
