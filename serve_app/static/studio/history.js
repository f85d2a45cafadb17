// History: the key's recent jobs (GET /v1/jobs: a scoped key sees its own), each reopenable in
// the Photo view; and the videos uploaded in this tab (the API keeps no list of them).
import { api, el } from "./api.js";
import { recentVideos } from "./video.js";

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
    const videos = recentVideos();
    $("video-history").tBodies[0].replaceChildren(...(videos.length ? videos.map(v => el("tr", { "data-video-id": v.video_id },
      el("td", {}, el("code", {}, v.video_id)), el("td", {}, String(v.frames)), el("td", {}, `${v.width} × ${v.height}`),
      el("td", {}, el("button", { type: "button", "aria-label": `Open video ${v.video_id}`, onclick: () => { showView("video"); video.reopen(v.video_id); } }, "Open"))))
      : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, "no videos in this tab"))]));
  }

  function reopen(j) {
    if (j.options?.video) { say("That is a video propagation job: open its video from the list below."); return; }
    showView("photo");
    job.open(j.job_id);
  }
  $("refresh-history").addEventListener("click", refresh);
  return { refresh };
}
