// Studio's entry: the tabs, the API key and the one notice line; each view is its own module.
import { ApiError, api, getKey, setKey } from "./api.js";
import { initPhoto } from "./photo.js";
import { initJob } from "./job.js";
import { initVideo } from "./video.js";
import { initHistory } from "./history.js";

const notice = document.getElementById("notice");
export function say(text, ok = false) {
  notice.textContent = text;
  notice.className = ok ? "ok" : "";
  notice.hidden = !text;
}

// Every failed call comes through here: 401/403 say what to do about the key.
window.addEventListener("meshline-api-error", event => {
  const error = event.detail;
  if (error.status === 401 || error.status === 403) { say(error.hint); if (error.status === 401) document.getElementById("key").focus(); }
});
window.addEventListener("unhandledrejection", event => {
  if (event.reason instanceof ApiError) { event.preventDefault(); if (![401, 403].includes(event.reason.status)) say(event.reason.hint); }
});

// Tabs: click or arrow keys.
const tabs = [...document.querySelectorAll('[role="tab"]')];
function show(tab) {
  for (const t of tabs) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    document.getElementById(t.getAttribute("aria-controls")).hidden = !selected;
  }
  if (tab.id === "tab-history") history.refresh();
}
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => show(tab));
  tab.addEventListener("keydown", e => {
    const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
    if (step) { const next = tabs[(i + step + tabs.length) % tabs.length]; show(next); next.focus(); }
  });
});
export function showView(name) { show(document.getElementById("tab-" + name)); }

// The key: checked with a cheap call that any key may make (the key's own jobs).
async function checkKey() {
  try {
    await api("/v1/jobs?limit=1");
    say(getKey() ? "Key accepted." : "", true);
    document.body.dataset.auth = "ok";
    return true;
  } catch (err) {
    document.body.dataset.auth = err instanceof ApiError ? String(err.status) : "error";
    if (!(err instanceof ApiError)) say("meshline is not reachable: " + err.message);
    return false;
  }
}
document.getElementById("key").value = getKey();
document.getElementById("key-form").addEventListener("submit", async e => {
  e.preventDefault();
  setKey(document.getElementById("key").value.trim());
  if (await checkKey()) { photo.loadModels(); history.refresh(); route(); }
});

const job = initJob({ say });
const photo = initPhoto({ say, job });
const video = initVideo({ say });
const history = initHistory({ say, job, video, showView });

// Links: /studio#job=<id> opens that job in the Photo view, #video=<id> that video (the admin
// page and `meshline submit` point here); opening either sets the address, so it can be shared.
const LINKED_ID = /^[A-Za-z0-9_-]{1,128}$/;
function route() {
  const link = new URLSearchParams(location.hash.slice(1));
  const jobId = link.get("job"), videoId = link.get("video");
  if (jobId && LINKED_ID.test(jobId)) { showView("photo"); job.open(jobId); }
  else if (videoId && LINKED_ID.test(videoId)) { showView("video"); video.reopen(videoId); }
}
window.addEventListener("hashchange", route);
if (await checkKey()) { photo.loadModels(); route(); }
document.body.dataset.ready = "1";
