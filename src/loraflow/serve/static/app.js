// loraflow web UI, shared parts: the API token, fetch helpers, tabs, job events (SSE) and start-up.
// Plain scripts (no build step, nothing fetched at runtime); each tab's code is in its own file:
// generate.js, storyboard.js, loras.js, train.js. They share these globals.
"use strict";
const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("loraflow-token") || "";
tokenInput.addEventListener("change", () => { localStorage.setItem("loraflow-token", tokenInput.value); init(); });

function withToken(url) {
  const t = tokenInput.value;
  return t ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t) : url;
}
function authHeaders() {
  return tokenInput.value ? { Authorization: "Bearer " + tokenInput.value } : {};
}
async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...authHeaders() };
  const response = await fetch(path, { ...options, headers });
  return answer(response);
}
async function answer(response) {
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
// A file from an <input type=file> or a canvas blob -> its name in the server's uploads (ComfyUI's route).
async function upload(file, filename) {
  const form = new FormData();
  form.append("image", file, filename || file.name);
  const response = await fetch("/upload/image", { method: "POST", body: form, headers: authHeaders() });
  return (await answer(response)).name;
}

function showTab(name) {
  document.querySelectorAll(".tab, .panel").forEach((el) => el.classList.remove("active"));
  document.querySelector(`.tab[data-tab="${name}"]`).classList.add("active");
  $(name).classList.add("active");
}
document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => showTab(tab.dataset.tab)));

let catalog = { models: [], loras: [], controlnets: [], schedulers: [] };

function fill(select, values, keep) {
  select.innerHTML = keep || "";
  for (const v of values) { const o = document.createElement("option"); o.value = o.textContent = v; select.appendChild(o); }
}
function element(tag, props = {}, ...children) {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}
function showError(box, message) { box.textContent = message; box.hidden = !message; }

const ENDED = ["done", "failed", "cancelled", "interrupted"];

// Follow a job's Server-Sent Events until it ends; `on` maps extra event types (preview, loss) to handlers.
function follow(job, bar, text, on = {}) {
  return new Promise((resolve) => {
    const events = new EventSource(withToken(`/api/jobs/${job.id}/events`));
    const finish = (data) => { events.close(); resolve(data); };
    events.addEventListener("progress", (e) => {
      const d = JSON.parse(e.data); bar.max = d.max; bar.value = d.value; text.textContent = `step ${d.value}/${d.max}`;
    });
    for (const [type, handler] of Object.entries(on)) events.addEventListener(type, (e) => handler(JSON.parse(e.data)));
    events.addEventListener("status", (e) => {
      const d = JSON.parse(e.data);
      text.textContent = d.status;
      if (on.status) on.status(d);
      if (ENDED.includes(d.status)) finish(d);
    });
    events.onerror = () => { if (events.readyState === EventSource.CLOSED) finish({ status: "unknown" }); };
  });
}

// Each tab file adds its start-up step here; they run once the page (all scripts) has loaded.
const startup = [];
async function init() {
  try {
    catalog = await api("/api/catalog");
    for (const step of startup) await step();
  } catch (e) {
    showError($("error"), e.message);
  }
}
document.addEventListener("DOMContentLoaded", init);
