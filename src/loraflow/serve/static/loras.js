// LoRAs tab: every LoRA in the server's models folder with its `lora info` (type, rank/alpha, family,
// base model, the full text), and a weight slider whose value goes into the Generate request.
"use strict";

const LORA_FIELDS = [["type", "type"], ["format", "format"], ["family", "family"], ["rank", "rank"],
                     ["alpha", "alpha"], ["base_model", "base model"], ["modules", "modules"]];

function loraCard(info) {
  const table = element("table", { className: "facts-table" });
  for (const [key, label] of LORA_FIELDS) {
    if (info[key] === undefined) continue;
    table.append(element("tr", { className: "field-" + key }, element("th", { textContent: label }), element("td", { textContent: info[key] })));
  }
  const text = element("details", {}, element("summary", { textContent: "lora info" }), element("pre", { textContent: info.text }));
  const weight = element("input", { type: "range", min: "-1", max: "2", step: "0.05", value: "1", className: "weight" });
  const shown = element("output", { textContent: "1.00" });
  weight.addEventListener("input", () => { shown.textContent = Number(weight.value).toFixed(2); });
  const add = element("button", { type: "button", className: "use", textContent: "Add to Generate" });
  add.onclick = () => {
    addLoraRow(info.name, parseFloat(weight.value));
    add.textContent = `added at ${Number(weight.value).toFixed(2)}`;
  };
  const controls = element("div", { className: "lora-use" }, element("label", { textContent: "weight" }), weight, shown, add);
  const card = element("div", { className: "card lora-card" }, element("h3", { textContent: info.name }), table, controls, text);
  card.dataset.name = info.name;
  return card;
}

async function loadLoras() {
  const list = $("lora-list");
  list.innerHTML = "";
  if (!catalog.loras.length) list.append(element("p", { className: "hint", textContent: "no LoRAs in the models folder (models/loras/*.safetensors)" }));
  for (const name of catalog.loras) {
    try {
      list.append(loraCard(await api("/api/loras/info?name=" + encodeURIComponent(name))));
    } catch (e) {  // one unreadable file must not hide the others
      list.append(element("div", { className: "card lora-card error", textContent: `${name}: ${e.message}` }));
    }
  }
}

startup.push(loadLoras);
