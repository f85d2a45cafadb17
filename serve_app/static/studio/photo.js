// Photo → mask: a photo at full resolution with zoom; points (click; shift-click or the toggle
// for background) and boxes (drag) prompt POST /v1/segment; its candidates are selectable; a
// detector's boxes (POST /v1/detect) can be used as the prompt. Repeat clicks on the same photo
// send the `image_id` the first answer gave (the server keeps the embedding), when it gives one.
// That first call is made as the photo loads: SAM's image encoder (the heavy part, and the
// Segmenter's cold start when it is at zero replicas) runs while the annotator aims.
import { ApiError, api, decodeRle, el, paintMask, postJson } from "./api.js";

export function initPhoto({ say, job }) {
  const $ = id => document.getElementById(id);
  const stage = $("stage"), inner = $("stage-inner"), photo = $("photo"), overlay = $("overlay"), marks = $("marks");
  let loading = 0;  // load()s begun: a photo that decodes after a later one was chosen is dropped
  const state = { file: null, width: 0, height: 0, points: [], box: null, masks: [], chosen: -1, imageId: null, preparing: null, detections: [], seq: 0, cursor: null };

  // --- loading and zoom ------------------------------------------------------------------
  async function load(file) {
    if (!file || !file.type.startsWith("image/")) { say("That is not an image file."); return; }
    const mine = ++loading;
    let bitmap;
    try { bitmap = await createImageBitmap(file); }
    catch (_) {  // the type says image, the browser cannot read it (HEIC, a broken file)
      if (mine === loading) say(`cannot decode ${file.name} — convert to JPEG or PNG`);
      return;
    }
    if (mine !== loading) return;
    state.seq++;  // an answer still on its way is for the previous photo
    Object.assign(state, { file, width: bitmap.width, height: bitmap.height, points: [], box: null, masks: [], chosen: -1, imageId: null, detections: [], cursor: null });
    delete document.body.dataset.prepared;
    state.preparing = prepare(file);
    for (const canvas of [photo, overlay, marks]) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
    photo.getContext("2d").drawImage(bitmap, 0, 0);
    overlay.getContext("2d").clearRect(0, 0, state.width, state.height);
    delete overlay.dataset.area;
    inner.style.display = "block";
    $("stage-empty").hidden = true;
    $("candidates").replaceChildren();
    $("detections").replaceChildren();
    $("segment-status").textContent = `${file.name}: ${bitmap.width} × ${bitmap.height} px. Click the object or drag a box around it.`;
    zoom();
    drawMarks();
    document.body.dataset.photo = "1";
  }
  // The photo's embedding, computed now (a prompt-less call: its mask is not shown); clicks
  // then send its image id. A failure here only means the first click sends the photo.
  function prepare(file) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("options", "{}");
    return api("/v1/segment", { method: "POST", body: form })
      .then(answer => { if (state.file === file && answer.image_id) state.imageId = answer.image_id; })
      .catch(() => {})
      .finally(() => { if (state.file === file) document.body.dataset.prepared = "1"; });
  }
  function zoom() {
    if (!state.width) return;
    const value = $("zoom").value;
    const z = value === "fit" ? Math.min((stage.clientWidth - 4) / state.width, (stage.clientHeight - 4) / state.height) : Number(value);
    for (const canvas of [photo, overlay, marks]) { canvas.style.width = `${state.width * z}px`; canvas.style.height = `${state.height * z}px`; }
    inner.style.width = `${state.width * z}px`; inner.style.height = `${state.height * z}px`;
  }
  $("zoom").addEventListener("change", zoom);
  window.addEventListener("resize", zoom);
  $("photo-file").addEventListener("change", e => load(e.target.files[0]));
  stage.addEventListener("dragover", e => { e.preventDefault(); stage.classList.add("drop"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("drop"));
  stage.addEventListener("drop", e => { e.preventDefault(); stage.classList.remove("drop"); load(e.dataTransfer.files[0]); });

  // --- prompting -------------------------------------------------------------------------
  function toImage(event) {
    const rect = marks.getBoundingClientRect();
    const x = (event.clientX - rect.left) * state.width / rect.width;
    const y = (event.clientY - rect.top) * state.height / rect.height;
    return [Math.min(Math.max(x, 0), state.width - 1), Math.min(Math.max(y, 0), state.height - 1)];
  }
  function clickLabel(event) {
    return event.shiftKey ? 0 : Number(document.querySelector('input[name="click-label"]:checked').value);
  }
  let drag = null;
  marks.addEventListener("pointerdown", e => { if (e.button === 0) { drag = { start: toImage(e), now: toImage(e) }; marks.setPointerCapture(e.pointerId); } });
  marks.addEventListener("pointermove", e => { if (drag) { drag.now = toImage(e); drawMarks(); } });
  marks.addEventListener("pointerup", e => {
    if (!drag) return;
    const [x0, y0] = drag.start, [x1, y1] = toImage(e);
    drag = null;
    if (Math.abs(x1 - x0) > 4 && Math.abs(y1 - y0) > 4) {
      state.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)].map(Math.round);
    } else {
      state.points.push({ x: Math.round(x0), y: Math.round(y0), label: clickLabel(e) });
    }
    segment();
  });
  // Keyboard: arrows move a cross, Enter adds an object point, Shift+Enter a background one.
  stage.addEventListener("keydown", e => {
    if (!state.width) return;
    const step = e.altKey ? 1 : Math.max(2, Math.round(state.width / 50));
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (!moves[e.key] && e.key !== "Enter") return;
    state.cursor ??= [Math.round(state.width / 2), Math.round(state.height / 2)];
    if (moves[e.key]) {
      e.preventDefault();
      const [dx, dy] = moves[e.key];
      state.cursor = [Math.min(Math.max(state.cursor[0] + dx, 0), state.width - 1), Math.min(Math.max(state.cursor[1] + dy, 0), state.height - 1)];
      drawMarks();
    } else if (e.key === "Enter") {
      e.preventDefault();
      state.points.push({ x: state.cursor[0], y: state.cursor[1], label: clickLabel(e) });
      segment();
    }
  });
  $("clear-prompt").addEventListener("click", () => {
    Object.assign(state, { points: [], box: null, masks: [], chosen: -1 });
    overlay.getContext("2d").clearRect(0, 0, state.width, state.height);
    delete overlay.dataset.area;
    $("candidates").replaceChildren();
    drawMarks();
  });

  function drawMarks() {
    const ctx = marks.getContext("2d");
    ctx.clearRect(0, 0, state.width, state.height);
    const unit = Math.max(state.width, state.height) / 400;
    ctx.lineWidth = 2 * unit;
    for (const d of state.detections) {
      ctx.strokeStyle = "rgba(255, 200, 0, .9)"; ctx.setLineDash([6 * unit, 4 * unit]);
      ctx.strokeRect(d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]);
    }
    ctx.setLineDash([]);
    const box = drag ? [drag.start[0], drag.start[1], drag.now[0], drag.now[1]] : state.box;
    if (box) { ctx.strokeStyle = "#00e5ff"; ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]); }
    for (const p of state.points) {
      ctx.beginPath(); ctx.arc(p.x, p.y, 5 * unit, 0, 2 * Math.PI);
      ctx.fillStyle = p.label ? "#12b76a" : "#f04438"; ctx.fill();
      ctx.strokeStyle = "#fff"; ctx.stroke();
    }
    if (state.cursor) {
      const [x, y] = state.cursor; ctx.strokeStyle = "#fff";
      ctx.beginPath(); ctx.moveTo(x - 10 * unit, y); ctx.lineTo(x + 10 * unit, y); ctx.moveTo(x, y - 10 * unit); ctx.lineTo(x, y + 10 * unit); ctx.stroke();
    }
  }

  function prompt() {
    const p = {};
    if (state.points.length) { p.points = state.points.map(q => [q.x, q.y]); p.labels = state.points.map(q => q.label); }
    if (state.box) p.box = state.box;
    return p;
  }

  async function segment() {
    drawMarks();
    if (!state.file) return;
    const seq = ++state.seq, file = state.file;
    const options = { ...prompt(), multimask: $("multimask").checked };
    $("segment-status").textContent = "segmenting…";
    const started = performance.now();
    let answer;
    try {
      if (!state.imageId && state.preparing) await state.preparing;
      if (seq !== state.seq) return;  // another click or photo came meanwhile
      if (state.imageId) {
        try { answer = await postJson("/v1/segment", { image_id: state.imageId, options }); }
        catch (err) {  // the server no longer holds it (expired, evicted): send the image again
          if (!(err instanceof ApiError) || err.status >= 500 || [401, 403].includes(err.status)) throw err;
          if (seq === state.seq) state.imageId = null;
        }
      }
      if (!answer) {
        if (seq !== state.seq) return;
        const form = new FormData();
        form.append("image", file, file.name);
        form.append("options", JSON.stringify(options));
        answer = await api("/v1/segment", { method: "POST", body: form });
      }
    } catch (err) {
      if (seq === state.seq) $("segment-status").textContent = "segment failed: " + (err.hint || err.message);
      return;
    }
    if (seq !== state.seq) return;  // a later click, or another photo, is on its way
    if (answer.image_id) state.imageId = answer.image_id;
    state.masks = answer.masks.map(m => ({ ...m, pixels: decodeRle(m.rle) }));
    let best = 0;
    state.masks.forEach((m, i) => { if (m.score > state.masks[best].score) best = i; });
    choose(best);
    $("candidates").replaceChildren(...state.masks.map((m, i) => el("button", {
      type: "button", role: "radio", "aria-checked": String(i === best), "data-index": String(i),
      onclick: () => choose(i),
    }, `mask ${i + 1} · score ${m.score.toFixed(2)} · ${m.area} px`)));
    $("segment-status").textContent = `${state.masks.length} mask${state.masks.length === 1 ? "" : "s"} in ${Math.round(performance.now() - started)} ms` +
      `${state.imageId ? " (cached embedding)" : ""}; the server took ${(answer.seconds * 1000).toFixed(0)} ms.`;
  }

  function choose(index) {
    state.chosen = index;
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, state.width, state.height);
    const band = Math.max(1, Math.round(state.width / 300));  // the edge band: shown at ~fit zoom
    const area = paintMask(ctx, state.masks[index].pixels, state.width, state.height, [30, 144, 255], 130, band);
    overlay.dataset.area = String(area);
    overlay.dataset.candidate = String(index);
    for (const b of $("candidates").children) b.setAttribute("aria-checked", String(Number(b.dataset.index) === index));
  }

  // --- detector ----------------------------------------------------------------------------
  async function loadModels() {
    try {
      const { models } = await api("/v1/models");
      const select = $("detector-model"), current = select.value;
      select.replaceChildren(...models.map(m => el("option", { value: m.model_id }, m.model_id + (m.task ? ` (${m.task})` : ""))));
      if (models.some(m => m.model_id === current)) select.value = current;
    } catch (_) { /* the notice says why */ }
  }
  $("detect").addEventListener("click", async () => {
    if (!state.file) { say("Choose a photo first."); return; }
    const file = state.file;  // the answer is for this photo: dropped if another is chosen meanwhile
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("options", JSON.stringify({ conf: Number($("detector-conf").value) }));
    $("detect").disabled = true;
    try {
      const answer = await api(`/v1/detect?model=${encodeURIComponent($("detector-model").value)}`, { method: "POST", body: form });
      if (state.file !== file) return;
      state.detections = answer.detections;
      $("detections").replaceChildren(...(answer.detections.length ? answer.detections.map((d, i) => el("li", {},
        el("button", { type: "button", "data-index": String(i), onclick: () => { state.box = d.box.map(Math.round); state.points = []; segment(); } },
          `${d.class_name} ${(d.score * 100).toFixed(0)} % — use its box`))) : [el("li", { class: "muted" }, "no detections")]));
      drawMarks();
    } catch (err) { if (state.file === file) say("detect failed: " + (err.hint || err.message)); }
    finally { $("detect").disabled = false; }
  });

  // --- what a job is made from -------------------------------------------------------------
  async function maskPng() {
    const mask = state.masks[state.chosen]?.pixels;
    if (!mask) return null;
    const canvas = document.createElement("canvas");
    canvas.width = state.width; canvas.height = state.height;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(state.width, state.height);
    for (let i = 0; i < mask.length; i++) { const v = mask[i] ? 255 : 0; image.data.set([v, v, v, 255], i * 4); }
    ctx.putImageData(image, 0, 0);
    return new Promise(resolve => canvas.toBlob(resolve, "image/png"));
  }
  job.setSource({
    file: () => state.file,
    prompt: () => (state.points.length || state.box ? prompt() : null),
    maskPng,
  });
  return { loadModels, load };
}
