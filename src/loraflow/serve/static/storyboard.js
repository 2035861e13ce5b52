// Storyboard tab: run a story (YAML, the demo story by default), then show the grid, each panel with
// its title, seed and scores, and the story's mean scores when it was scored.
"use strict";

function scoreText(scores) {
  return Object.entries(scores || {}).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(2) : v}`).join(", ");
}

function panelCard(image, scene) {
  const img = element("img", { src: withToken(image.url), alt: image.title || image.filename, loading: "lazy" });
  const title = element("strong", { textContent: image.title || image.filename });
  const facts = element("span", { className: "facts", textContent: `seed ${image.seed}` + (scene && scene.scores ? ` · ${scoreText(scene.scores)}` : "") });
  const info = element("pre", { textContent: image.infotext || "" });
  return element("div", { className: "card panel-card" }, img, title, facts, info);
}

function showStory(result) {
  const box = $("story-result");
  box.innerHTML = "";
  const grid = element("img", { id: "story-grid", src: withToken(result.grid.url), alt: "storyboard grid" });
  const record = result.story || {};
  const summary = record.scores ? element("p", { id: "story-scores", textContent: "scores: " + scoreText(record.scores) })
                                : element("p", { id: "story-scores", className: "hint", textContent: "not scored (tick Score panels and name local CLIP / aesthetic weights)" });
  const panels = element("div", { id: "story-panels" });
  result.images.forEach((image, i) => panels.appendChild(panelCard(image, (record.scenes || [])[i])));
  box.append(element("h3", { textContent: record.title || "storyboard" }), grid, summary, element("h3", { textContent: "Panels" }), panels);
}

$("story-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("story-error"), "");
  $("run-story").disabled = true;
  try {
    const body = { story: $("story").value, model: $("story-model").value };
    if ($("story-score").checked) {  // scores need local weights, named inside the server's models folder
      body.score = true;
      for (const key of ["clip", "aesthetic"]) if ($("story-" + key).value.trim()) body[key] = $("story-" + key).value.trim();
    }
    const job = await api("/api/jobs/storyboard", { method: "POST", body: JSON.stringify(body) });
    const end = await follow(job, $("story-progress"), $("story-status"));
    if (end.status !== "done") { showError($("story-error"), `${end.status}: ${end.error || ""}`); return; }
    showStory(end.result);
  } catch (e) {
    showError($("story-error"), e.message);
  } finally {
    $("run-story").disabled = false;
  }
});

startup.push(async () => { fill($("story-model"), catalog.models); });
