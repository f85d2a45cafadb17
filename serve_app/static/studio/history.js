// History: the key's recent jobs (GET /v1/jobs) and videos (GET /v1/videos): a scoped key sees
// its own, an admin key everyone's. A job reopens in the Photo view, a video in the Video view.
import { api, el } from "./api.js";

export function initHistory({ say, job, video, showView }) {
  const $ = id => document.getElementById(id);

  async function refresh() {
    try {
      const { jobs } = await api("/v1/jobs?limit=30");
      $("history").tBodies[0].replaceChildren(...(jobs.length ? jobs.map(j => el("tr", { "data-job-id": j.job_id, "data-status": j.status },
        el("td", {}, el("code", {}, j.job_id.slice(0, 12))),
        el("td", { class: "status-" + j.status }, `${j.status} · ${Math.round(j.progress)} %`),
        el("td", {}, new Date(j.created_at).toLocaleString()),
        el("td", {}, j.stages.map(s => s.name).join(", ") + (j.error ? " — " : ""), j.error ? el("span", { class: "error" }, j.error) : ""),
        el("td", {}, el("button", { type: "button", "aria-label": `Open job ${j.job_id}`, onclick: () => reopen(j) }, "Open"))))
        : [el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no jobs yet"))]));
    } catch (err) { $("history").tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "error" }, err.hint || err.message))); }
    try {
      const { videos } = await api("/v1/videos?limit=30");
      $("video-history").tBodies[0].replaceChildren(...(videos.length ? videos.map(v => el("tr", { "data-video-id": v.video_id },
        el("td", {}, el("code", {}, v.video_id.slice(0, 12))),
        el("td", {}, new Date(v.created_at).toLocaleString()),
        el("td", {}, String(v.frames) + (v.frames_with_masks ? ` (${v.frames_with_masks} with masks)` : "")),
        el("td", {}, `${v.width} × ${v.height}`),
        el("td", {}, v.objects.length ? v.objects.join(", ") : "—"),
        el("td", {}, el("button", { type: "button", "aria-label": `Open video ${v.video_id}`, onclick: () => { showView("video"); video.reopen(v.video_id); } }, "Open"))))
        : [el("tr", {}, el("td", { colspan: "6", class: "muted" }, "no videos yet"))]));
    } catch (err) { $("video-history").tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "error" }, err.hint || err.message))); }
  }

  function reopen(j) {
    if (j.options?.video) { say("That is a video propagation job: open its video from the list below."); return; }
    showView("photo");
    job.open(j.job_id);
  }
  $("refresh-history").addEventListener("click", refresh);
  return { refresh };
}
