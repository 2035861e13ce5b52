// Generate tab: the form (-> GenerateConfig), LoRA rows, reference images (ControlNet, img2img, a mask
// uploaded or drawn), the live preview and the gallery with "send to Generate".
"use strict";

// Field help comes from the same pydantic config the CLI uses (GET /api/options/generate).
async function describeFields() {
  const schema = await api("/api/options/generate");
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const el = $(name);
    if (el && prop.description) { el.title = prop.description; el.parentElement.title = prop.description; }
  }
  const control = schema.$defs && schema.$defs.ControlUnit;
  const types = control ? control.properties.type.enum : [];
  fill($("control-type"), types || [], '<option value="">(none)</option>');
}

function addLoraRow(name = "", weight = 1.0) {
  const select = element("select");
  fill(select, catalog.loras);
  if (name) {  // infotext names a LoRA by its stem (`style`), the catalog by file (`style.safetensors`)
    const known = [name, name + ".safetensors"].find((n) => catalog.loras.includes(n));
    if (!known) select.append(element("option", { value: name, textContent: name }));
    select.value = known || name;
  }
  const w = element("input", { type: "range", min: "-1", max: "2", step: "0.05", value: weight, title: "weight", className: "weight" });
  const shown = element("output", { textContent: Number(weight).toFixed(2) });
  w.addEventListener("input", () => { shown.textContent = Number(w.value).toFixed(2); });
  const remove = element("button", { type: "button", textContent: "×", title: "remove" });
  const row = element("div", { className: "lora-row" }, select, w, shown, remove);
  remove.onclick = () => row.remove();
  $("lora-rows").appendChild(row);
}
$("add-lora").onclick = () => addLoraRow();

$("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });

// ---- the inpainting mask, drawn over the init image -------------------------------------------
const mask = { canvas: $("mask-canvas"), drawn: false, size: null };
mask.ctx = mask.canvas.getContext("2d");
$("init-image").addEventListener("change", () => {
  const file = $("init-image").files[0];
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => { mask.size = [img.naturalWidth, img.naturalHeight]; };
  img.src = url;
  mask.canvas.parentElement.style.backgroundImage = `url(${url})`;
});
function paint(event) {
  if (!(event.buttons & 1)) return;
  const r = mask.canvas.getBoundingClientRect();
  const x = (event.clientX - r.left) * mask.canvas.width / r.width, y = (event.clientY - r.top) * mask.canvas.height / r.height;
  mask.ctx.fillStyle = "#ff005a";
  mask.ctx.beginPath();
  mask.ctx.arc(x, y, $("brush").value / 2, 0, 2 * Math.PI);
  mask.ctx.fill();
  mask.drawn = true;
}
mask.canvas.addEventListener("pointerdown", paint);
mask.canvas.addEventListener("pointermove", paint);
$("mask-clear").onclick = () => { mask.ctx.clearRect(0, 0, mask.canvas.width, mask.canvas.height); mask.drawn = false; };

// The drawn strokes as a black/white PNG at the init image's size (white = repaint). The canvas is
// see-through (CSS opacity) over the init image; a pixel at least half covered by strokes is painted.
function drawnMask() {
  const [w, h] = mask.size || [mask.canvas.width, mask.canvas.height];
  const out = element("canvas", { width: w, height: h });
  const ctx = out.getContext("2d");
  ctx.drawImage(mask.canvas, 0, 0, w, h);
  const pixels = ctx.getImageData(0, 0, w, h);
  const d = pixels.data;  // RGBA bytes
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i + 3] >= 128 ? 255 : 0;  // alpha: edges of strokes are partly covered after scaling
    d[i] = d[i + 1] = d[i + 2] = v;
    d[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// ---- the request -------------------------------------------------------------------------------
async function formConfig() {
  const config = { prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, model: $("model").value };
  if ($("scheduler").value) config.scheduler = $("scheduler").value;
  for (const key of ["num_inference_steps", "width", "height", "seed"]) if ($(key).value !== "") config[key] = parseInt($(key).value, 10);
  if ($("guidance_scale").value !== "") config.guidance_scale = parseFloat($("guidance_scale").value);
  config.lora = [...document.querySelectorAll(".lora-row")].map((r) => r.querySelector("select").value + ":" + r.querySelector(".weight").value);
  if ($("control-type").value) {
    const image = $("control-image").files[0];
    if (!image) throw new Error("ControlNet: choose a control image");
    const unit = { type: $("control-type").value, image: await upload(image), scale: parseFloat($("control-scale").value) };
    if ($("control-model").value) unit.model = $("control-model").value;
    config.control = [unit];
  }
  const init = $("init-image").files[0];
  if (init) {
    config.init_image = await upload(init);
    config.strength = parseFloat($("strength").value);
    if ($("mask-image").files[0]) config.mask = await upload($("mask-image").files[0]);
    else if (mask.drawn) config.mask = await upload(await drawnMask(), "mask.png");
  } else if ($("mask-image").files[0] || mask.drawn) {
    throw new Error("inpainting: a mask needs an init image");
  }
  return config;
}

$("gen-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("error"), "");
  $("run").disabled = true;
  try {
    const job = await api("/api/jobs/generate", { method: "POST", body: JSON.stringify(await formConfig()) });
    $("status-text").textContent = "queued";
    const preview = $("preview");
    const end = await follow(job, $("progress"), $("status-text"), {
      preview: (d) => { preview.src = "data:image/jpeg;base64," + d.jpeg; preview.hidden = false; },
    });
    if (end.status !== "done") showError($("error"), `${end.status}: ${end.error || ""}`);
    else if (end.result && end.result.images.length) preview.src = withToken(end.result.images[0].url);  // the finished picture
    await loadGallery();
  } catch (e) {
    showError($("error"), e.message);
  } finally {
    $("run").disabled = false;
  }
});

// ---- gallery -------------------------------------------------------------------------------------
function card(image, caption) {
  const img = element("img", { src: withToken(image.url), alt: caption || image.filename, loading: "lazy" });
  const pre = element("pre", { textContent: image.infotext || caption || image.filename });
  const div = element("div", { className: "card" }, img, pre);
  if (image.infotext) {
    const send = element("button", { type: "button", className: "send", textContent: "Send to Generate" });
    send.onclick = () => sendToGenerate(image.infotext);
    div.append(send);
  }
  return div;
}

// A1111 parameters text -> the form (parsed on the server by the same code that writes it).
async function sendToGenerate(infotext) {
  try {
    const config = await api("/api/infotext", { method: "POST", body: JSON.stringify({ text: infotext }) });
    $("prompt").value = config.prompt;
    $("negative_prompt").value = config.negative_prompt;
    for (const key of ["num_inference_steps", "guidance_scale", "width", "height", "seed"]) $(key).value = key in config ? config[key] : "";
    $("scheduler").value = config.scheduler || "";
    $("lora-rows").innerHTML = "";
    for (const spec of config.lora) {
      const cut = spec.lastIndexOf(":");
      addLoraRow(spec.slice(0, cut), parseFloat(spec.slice(cut + 1)));
    }
    showTab("generate");
    $("prompt").scrollIntoView({ block: "center" });
  } catch (e) {
    showError($("error"), e.message);
  }
}

async function loadGallery() {
  const { jobs } = await api("/api/jobs?kind=generate&status=done&limit=24");
  const gallery = $("gallery");
  gallery.innerHTML = "";
  for (const job of jobs) for (const image of job.result.images || []) gallery.appendChild(card(image));
}

startup.push(async () => {
  fill($("model"), catalog.models);
  fill($("scheduler"), catalog.schedulers, '<option value="">(model default)</option>');
  fill($("control-model"), catalog.controlnets || []);
  await describeFields();
  await loadGallery();
});
