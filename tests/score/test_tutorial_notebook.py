"""examples/notebooks/tutorial.ipynb runs top to bottom, headless (nbclient), on the demo model
with small step counts. It sits with the score tests because the tiny CLIP and aesthetic head that
its last step scores with are built by this folder's fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import nbclient
import nbformat

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "notebooks" / "tutorial.ipynb"


def test_tutorial_runs_top_to_bottom(tmp_path, tiny_clip_dir, head_files):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [index] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    # what a test can afford: few pictures and steps; the tiny scorer instead of real weights
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"WORK = Path({str(tmp_path / 'work')!r})\n"
        "N_IMAGES = 20\n"
        "TRAIN_OPTIONS.update(max_steps=3, batch_size=4)\n"
        "GEN_OPTIONS.update(num_inference_steps=2)\n"
        "STORY_OPTIONS.update(num_inference_steps=2)\n"
        f"CLIP, AESTHETIC = {str(tiny_clip_dir)!r}, {str(head_files['mlp'])!r}\n"))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()

    work = tmp_path / "work"
    outputs = {i: "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
               for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = "\n".join(outputs.values())
    # every tenth of the 20 pictures was shrunk below the recipe's 64 px: 2 rejected
    assert "20 in: 18 kept + 2 rejected + 0 errored" in text
    assert "18 in: 18 exported + 0 errored" in text
    assert (work / "lora" / "tutorial.safetensors").is_file() and "3 steps" in text
    assert len(list((work / "generated").glob("*.png"))) == 4
    story = json.loads((work / "story" / "story.json").read_text(encoding="utf-8"))
    assert len(story["scenes"]) == 8 and "gate:" in text
    # pictures shown inline: stats histograms, loss plot, generated grid, storyboard grid, score chart
    pictures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert pictures == 5
