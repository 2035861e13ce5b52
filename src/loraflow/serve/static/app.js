// loraflow web UI: plain JS over the HTTP API (/api/catalog, /api/options, /api/jobs, SSE events).
"use strict";
const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("loraflow-token") || "";
tokenInput.addEventListener("change", () => { localStorage.setItem("loraflow-token", tokenInput.value); init(); });

function withToken(url) {
  const t = tokenInput.value;
  return t ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t) : url;
}
async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (tokenInput.value) headers["Authorization"] = "Bearer " + tokenInput.value;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll(".tab, .panel").forEach((el) => el.classList.remove("active"));
  tab.classList.add("active");
  $(tab.dataset.tab).classList.add("active");
}));

let catalog = { models: [], loras: [], schedulers: [] };

function fill(select, values, keep) {
  select.innerHTML = keep || "";
  for (const v of values) { const o = document.createElement("option"); o.value = o.textContent = v; select.appendChild(o); }
}

// Field help comes from the same pydantic config the CLI uses (GET /api/options/generate).
async function describeFields() {
  const schema = await api("/api/options/generate");
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const el = $(name);
    if (el && prop.description) { el.title = prop.description; el.parentElement.title = prop.description; }
  }
}

function addLoraRow(name = "", weight = 1.0) {
  const row = document.createElement("div");
  row.className = "lora-row";
  const select = document.createElement("select");
  fill(select, catalog.loras);
  if (name) select.value = name;
  const w = document.createElement("input");
  w.type = "number"; w.step = "0.05"; w.value = weight; w.title = "weight";
  const remove = document.createElement("button");
  remove.type = "button"; remove.textContent = "×"; remove.onclick = () => row.remove();
  row.append(select, w, remove);
  $("lora-rows").appendChild(row);
}
$("add-lora").onclick = () => addLoraRow();

function formConfig() {
  const config = { prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, model: $("model").value };
  if ($("scheduler").value) config.scheduler = $("scheduler").value;
  for (const key of ["num_inference_steps", "width", "height", "seed"]) if ($(key).value !== "") config[key] = parseInt($(key).value, 10);
  if ($("guidance_scale").value !== "") config.guidance_scale = parseFloat($("guidance_scale").value);
  config.lora = [...document.querySelectorAll(".lora-row")].map((r) => r.querySelector("select").value + ":" + r.querySelector("input").value);
  return config;
}

function follow(job, bar, text, preview) {
  return new Promise((resolve) => {
    const events = new EventSource(withToken(`/api/jobs/${job.id}/events`));
    const finish = (data) => { events.close(); resolve(data); };
    events.addEventListener("progress", (e) => {
      const d = JSON.parse(e.data); bar.max = d.max; bar.value = d.value; text.textContent = `step ${d.value}/${d.max}`;
    });
    events.addEventListener("preview", (e) => {
      if (preview) { preview.src = "data:image/jpeg;base64," + JSON.parse(e.data).jpeg; preview.hidden = false; }
    });
    events.addEventListener("status", (e) => {
      const d = JSON.parse(e.data);
      text.textContent = d.status;
      if (["done", "failed", "cancelled", "interrupted"].includes(d.status)) finish(d);
    });
    events.onerror = () => { if (events.readyState === EventSource.CLOSED) finish({ status: "unknown" }); };
  });
}

function showError(box, message) { box.textContent = message; box.hidden = !message; }

$("gen-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("error"), "");
  $("run").disabled = true;
  try {
    const job = await api("/api/jobs/generate", { method: "POST", body: JSON.stringify(formConfig()) });
    $("status-text").textContent = "queued";
    const end = await follow(job, $("progress"), $("status-text"), $("preview"));
    if (end.status !== "done") showError($("error"), `${end.status}: ${end.error || ""}`);
    // the live previews are noisy latents; the preview ends on the finished picture
    else if (end.result && end.result.images && end.result.images.length) {
      $("preview").src = withToken(end.result.images.at(-1).url);
      $("preview").hidden = false;
    }
    await loadGallery();
  } catch (e) {
    showError($("error"), e.message);
  } finally {
    $("run").disabled = false;
  }
});

function card(image, caption) {
  const div = document.createElement("div");
  div.className = "card";
  const img = document.createElement("img");
  img.src = withToken(image.url); img.alt = caption || image.filename; img.loading = "lazy";
  const pre = document.createElement("pre");
  pre.textContent = image.infotext || caption || image.filename;
  div.append(img, pre);
  return div;
}

async function loadGallery() {
  const { jobs } = await api("/api/jobs?kind=generate&status=done&limit=24");
  const gallery = $("gallery");
  gallery.innerHTML = "";
  for (const job of jobs) for (const image of job.result.images || []) gallery.appendChild(card(image));
}

$("story-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("story-error"), "");
  $("run-story").disabled = true;
  try {
    const job = await api("/api/jobs/storyboard", { method: "POST", body: JSON.stringify({ story: $("story").value, model: $("story-model").value }) });
    const end = await follow(job, $("story-progress"), $("story-status"), null);
    if (end.status !== "done") { showError($("story-error"), `${end.status}: ${end.error || ""}`); return; }
    const result = $("story-result");
    result.innerHTML = "";
    const grid = document.createElement("img");
    grid.id = "story-grid"; grid.src = withToken(end.result.grid.url); grid.alt = "storyboard grid";
    result.appendChild(grid);
  } catch (e) {
    showError($("story-error"), e.message);
  } finally {
    $("run-story").disabled = false;
  }
});

async function init() {
  try {
    catalog = await api("/api/catalog");
    fill($("model"), catalog.models);
    fill($("story-model"), catalog.models);
    fill($("scheduler"), catalog.schedulers, '<option value="">(model default)</option>');
    await describeFields();
    await loadGallery();
  } catch (e) {
    showError($("error"), e.message);
  }
}
init();
