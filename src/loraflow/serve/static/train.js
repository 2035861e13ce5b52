// Train tab: start a run from the form or a pasted YAML config (POST /api/jobs/train), follow it (live
// loss chart from the job's `loss` events, validation images and checkpoints as they are written),
// cancel it, and resume a cancelled / failed / interrupted run from its last checkpoint (re-queue).
"use strict";

const training = { job: null, losses: [], firstSteps: [], timer: null };  // firstSteps: each run's first step

function trainConfig() {
  const yaml = $("train-yaml").value.trim();
  if (yaml) return yaml;  // YAML text: the server parses it into the same TrainConfig
  const config = { dataset: $("train-dataset").value, model: $("train-model").value };
  for (const key of ["max_steps", "resolution", "lora_rank", "batch_size", "save_every", "validation_every", "validation_steps"]) {
    const v = $("train-" + key).value;
    if (v !== "") config[key] = parseInt(v, 10);
  }
  for (const key of ["lora_alpha", "learning_rate"]) config[key] = parseFloat($("train-" + key).value);
  if ($("train-validation_prompt").value.trim()) config.validation_prompt = [$("train-validation_prompt").value.trim()];
  return config;
}

// ---- the loss chart: raw loss (light) and its moving average (dark) against the step -----------
function niceTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function movingAverage(values, window) {
  return values.map((_, i) => {
    const part = values.slice(Math.max(0, i - window + 1), i + 1);
    return part.reduce((a, b) => a + b, 0) / part.length;
  });
}

function drawLoss() {
  const canvas = $("loss-chart"), ctx = canvas.getContext("2d");
  const points = training.losses;
  canvas.dataset.points = points.length;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#666";
  if (!points.length) { ctx.fillText("the loss appears here once training steps run", 20, canvas.height / 2); return; }
  const m = { left: 56, right: 12, top: 12, bottom: 34 };
  const w = canvas.width - m.left - m.right, h = canvas.height - m.top - m.bottom;
  const steps = points.map((p) => p.step), losses = points.map((p) => p.loss);
  const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
  let y0 = Math.min(...losses), y1 = Math.max(...losses);
  if (y1 - y0 < 1e-9) { y0 -= 0.5 * Math.abs(y0 || 1); y1 += 0.5 * Math.abs(y1 || 1); }
  const span = y1 - y0;
  y0 -= 0.05 * span; y1 += 0.15 * span;  // room above the curve for the legend line
  const X = (s) => m.left + (s - x0) / (x1 - x0) * w, Y = (v) => m.top + (1 - (v - y0) / (y1 - y0)) * h;
  ctx.strokeStyle = "#e5e5e5"; ctx.lineWidth = 1; ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const t of niceTicks(y0, y1, 5)) {
    ctx.beginPath(); ctx.moveTo(m.left, Y(t)); ctx.lineTo(m.left + w, Y(t)); ctx.stroke(); ctx.fillText(t.toPrecision(3), m.left - 6, Y(t));
  }
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const t of niceTicks(x0, x1, 6).filter(Number.isInteger)) {
    ctx.beginPath(); ctx.moveTo(X(t), m.top); ctx.lineTo(X(t), m.top + h); ctx.stroke(); ctx.fillText(String(t), X(t), m.top + h + 4);
  }
  ctx.strokeStyle = "#999"; ctx.strokeRect(m.left, m.top, w, h);
  ctx.fillText("step", m.left + w / 2, m.top + h + 18);
  ctx.save(); ctx.translate(12, m.top + h / 2); ctx.rotate(-Math.PI / 2); ctx.fillText("loss", 0, -6); ctx.restore();
  const window = Math.max(1, Math.min(50, Math.round(points.length / 10)));
  const line = (values, colour, width) => {
    ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(X(steps[i]), Y(v)) : ctx.moveTo(X(steps[i]), Y(v))));
    ctx.stroke();
    if (values.length === 1) { ctx.fillStyle = colour; ctx.fillRect(X(steps[0]) - 2, Y(values[0]) - 2, 4, 4); }
  };
  line(losses, "#9ecbff", 1);
  line(movingAverage(losses, window), "#0550ae", 2);
  ctx.textAlign = "left"; ctx.fillStyle = "#0550ae";
  ctx.fillText(`last ${losses[losses.length - 1].toFixed(4)} · average of ${window} step${window > 1 ? "s" : ""} (dark)`, m.left + 6, m.top + 4);
}

// ---- validation images and checkpoints (GET /api/jobs/{id}/training) ----------------------------
async function refreshTrainingFiles() {
  if (!training.job) return;
  const files = await api(`/api/jobs/${training.job.id}/training`);
  const samples = $("samples");
  for (const s of files.samples) {
    if (samples.querySelector(`[data-name="${s.name}"]`)) continue;
    const fig = element("figure", {}, element("img", { src: withToken(s.url), alt: s.name }), element("figcaption", { textContent: s.name }));
    fig.dataset.name = s.name;
    samples.append(fig);
  }
  const body = $("checkpoints").querySelector("tbody");
  body.innerHTML = "";
  for (const c of files.checkpoints) {
    body.append(element("tr", {}, element("td", { textContent: c.name }), element("td", { textContent: c.step }),
                        element("td", { textContent: new Date(c.modified * 1000).toLocaleTimeString() })));
  }
  $("train-loras").textContent = files.loras.length ? "LoRA files: " + files.loras.join(", ") : "";
}

function setButtons(status) {
  const running = status === "queued" || status === "running";
  $("run-train").disabled = running;
  $("cancel-train").disabled = !running;
  $("resume-train").disabled = !["cancelled", "failed", "interrupted"].includes(status);
}

async function watchTraining(job) {
  training.job = job;
  setButtons(job.status);
  clearInterval(training.timer);
  training.timer = setInterval(() => refreshTrainingFiles().catch(() => {}), 1500);
  let started = false;
  try {
    const end = await follow(job, $("train-progress"), $("train-status"), {
      loss: (d) => {
        if (!started) { training.firstSteps.push(d.step); started = true; }
        // a resumed run repeats the steps after its last checkpoint: those replace the old points
        training.losses = training.losses.filter((p) => p.step < d.step);
        training.losses.push(d);
        drawLoss();
      },
      status: (d) => setButtons(d.status),
    });
    if (end.status !== "done" && end.status !== "cancelled") showError($("train-error"), `${end.status}: ${end.error || ""}`);
    setButtons(end.status);
  } finally {
    clearInterval(training.timer);
    await refreshTrainingFiles();
  }
}

$("train-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("train-error"), "");
  training.submitted = true;
  try {
    const job = await api("/api/jobs/train", { method: "POST", body: JSON.stringify(trainConfig()) });
    training.losses = []; training.firstSteps = [];
    $("samples").innerHTML = "";
    drawLoss();
    await watchTraining(job);
  } catch (e) {
    showError($("train-error"), e.message);
    setButtons("idle");
  }
});

$("cancel-train").onclick = async () => {
  try { await api(`/api/jobs/${training.job.id}/cancel`, { method: "POST" }); } catch (e) { showError($("train-error"), e.message); }
};

$("resume-train").onclick = async () => {
  showError($("train-error"), "");
  try {  // a re-queued train job continues from its last checkpoint
    await watchTraining(await api(`/api/jobs/${training.job.id}/requeue`, { method: "POST" }));
  } catch (e) {
    showError($("train-error"), e.message);
  }
};

// On load: show the latest train job (its checkpoints; resume when it stopped early).
startup.push(async () => {
  fill($("train-model"), catalog.models);
  const schema = await api("/api/options/train");  // field help from TrainConfig, as the CLI's --help
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const el = $("train-" + name);
    if (el && prop.description) el.title = el.parentElement.title = prop.description;
  }
  drawLoss();
  const { jobs } = await api("/api/jobs?kind=train&limit=1");
  if (!jobs.length || training.job || training.submitted) return;  // a run started meanwhile here is followed already
  const job = jobs[0];
  $("train-status").textContent = job.status;
  if (ENDED.includes(job.status)) { training.job = job; setButtons(job.status); await refreshTrainingFiles(); }
  else watchTraining(job);
});
