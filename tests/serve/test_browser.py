"""The web UI in a real headless Chromium: generate on the tiny model (the preview ends on the
finished picture), the gallery's "send to Generate", and the storyboard tab's demo story."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from browser_helpers import browse, fill_generate_form, needs_chromium, screenshot

pytestmark = needs_chromium
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def page(start_server):
    url, _ = start_server()
    with browse(url) as page:
        yield page


def test_generate_in_the_browser(page, tmp_path):
    fill_generate_form(page, "an orange cat", negative_prompt="blurry", num_inference_steps="2",
                       guidance_scale="5", width="64", height="64", seed="42")
    page.click("#add-lora")
    page.fill(".lora-row input.weight", "0.7")
    page.select_option("#scheduler", "DPM++ 2M Karras")
    assert "denoising steps" in page.get_attribute("#num_inference_steps", "title")  # help from GenerateConfig
    page.click("#run")
    page.wait_for_selector("#gallery .card img", timeout=60_000)
    page.wait_for_function("document.querySelector('#gallery .card img').naturalWidth === 64", timeout=30_000)
    info = page.inner_text("#gallery .card pre")
    assert "an orange cat" in info and "Seed: 42" in info and "<lora:style:0.7>" in info and "Karras" in info
    assert page.inner_text("#status-text") == "done"
    # the preview ends on the finished picture: the same pixels as the gallery's image
    page.wait_for_function("!document.querySelector('#preview').src.startsWith('data:')")
    assert page.get_attribute("#preview", "src").split("?")[0] == page.get_attribute("#gallery .card img", "src").split("?")[0]
    screenshot(page, tmp_path, "generate")


def test_send_to_generate_fills_the_form_from_the_infotext(page, tmp_path):
    fill_generate_form(page, "a blue star", negative_prompt="grey", num_inference_steps="2",
                       guidance_scale="3.5", width="64", height="72", seed="11")
    page.click("#add-lora")
    page.fill(".lora-row input.weight", "0.55")
    page.select_option("#scheduler", "Euler a")
    page.click("#run")
    page.wait_for_selector("#gallery .card button.send", timeout=60_000)
    page.fill("#prompt", "")  # a different form, then the gallery card's parameters put back
    page.fill("#seed", "")
    page.click("#gallery .card:first-child button.send")
    page.wait_for_function("document.querySelector('#prompt').value !== ''")
    assert page.input_value("#prompt") == "a blue star"
    assert page.input_value("#negative_prompt") == "grey"
    assert [page.input_value(f) for f in ("#num_inference_steps", "#guidance_scale", "#width", "#height", "#seed")] == \
        ["2", "3.5", "64", "72", "11"]
    assert page.input_value("#scheduler") == "Euler a"
    assert page.input_value(".lora-row select") == "style.safetensors" and page.input_value(".lora-row input.weight") == "0.55"


def test_storyboard_tab_opens_with_the_demo_story(page, tmp_path):
    page.click("button[data-tab=storyboard]")
    shipped = yaml.safe_load((REPO / "examples" / "stories" / "demo-shapes.yaml").read_text(encoding="utf-8"))
    assert yaml.safe_load(page.input_value("#story")) == shipped
    page.wait_for_function("document.querySelectorAll('#story-model option').length > 0")
    assert page.input_value("#story-model") == "demo"  # the model whose words the story uses
    page.select_option("#story-model", "tiny-sdxl")  # faster here
    # the tiny model's own size is SDXL's 1024 px: ask for the demo model's 64 px, and 2 steps
    fast = page.input_value("#story").replace("num_inference_steps: 20", "num_inference_steps: 2\n  height: 64\n  width: 64")
    page.fill("#story", fast.replace("width: 512\n  height: 1024", "width: 256\n  height: 512"))
    page.click("#run-story")
    page.wait_for_function("document.querySelector('#story-grid') && document.querySelector('#story-grid').naturalWidth === 256",
                           timeout=120_000)
    titles = page.locator("#story-panels .panel-card strong").all_inner_texts()
    assert titles == [scene["title"] for scene in shipped["scenes"]]
    seeds = page.locator("#story-panels .panel-card .facts").all_inner_texts()
    assert seeds == [f"seed {7 + i}" for i in range(8)]  # seed 7, seed_policy increment
    assert "not scored" in page.inner_text("#story-scores")
    screenshot(page, tmp_path, "storyboard")


def test_storyboard_tab_shows_panel_scores(start_server, tmp_path):
    """Scores need local weights: a tiny random CLIP and aesthetic head in the server's models folder."""
    import sys

    import torch
    from safetensors.torch import save_file
    from transformers import CLIPModel

    from loraflow.models.tiny_tokenizers import build_clip_tokenizer

    sys.path.insert(0, str(REPO / "tests" / "score"))  # the score tests' tiny CLIP recipe
    from score_helpers import PROJ, mlp_head_state, save_processor, tiny_clip_config

    models = tmp_path / "models"
    tokenizer = build_clip_tokenizer(tmp_path / "vocab")
    torch.manual_seed(2)
    CLIPModel(tiny_clip_config(len(tokenizer))).save_pretrained(models / "tiny-clip")
    tokenizer.save_pretrained(models / "tiny-clip")
    save_processor(models / "tiny-clip")
    save_file(mlp_head_state(PROJ), models / "head.safetensors")
    url, _ = start_server(models_dir=str(models))
    story = ("title: Two\ndefaults: {height: 64, width: 64, num_inference_steps: 2, seed: 3}\n"
             "grid: {columns: 2, width: 128, height: 64}\n"
             "scenes:\n  - {title: One, prompt: a red circle}\n  - {title: Two, prompt: a blue square}\n")
    with browse(url) as page:
        page.click("button[data-tab=storyboard]")
        page.wait_for_function("document.querySelectorAll('#story-model option').length > 0")
        page.select_option("#story-model", "tiny:sdxl")
        page.fill("#story", story)
        page.check("#story-score")
        page.fill("#story-clip", "tiny-clip")
        page.fill("#story-aesthetic", "head.safetensors")
        page.click("#run-story")
        page.wait_for_selector("#story-panels .panel-card", timeout=120_000)
        facts = page.locator("#story-panels .panel-card .facts").all_inner_texts()
        summary = page.inner_text("#story-scores")
        screenshot(page, tmp_path, "storyboard-scores")
    job = httpx.get(url + "/api/jobs?kind=storyboard").json()["jobs"][0]
    record = job["result"]["story"]
    for text, scene in zip(facts, record["scenes"]):  # each panel shows the scores its story record holds
        assert text == f"seed {scene['seed']} · " + ", ".join(f"{k} {v:.2f}" for k, v in scene["scores"].items())
    means = [s["scores"]["aesthetic"] for s in record["scenes"]]
    assert f"mean_aesthetic {sum(means) / 2:.2f}" in summary
    refused = httpx.post(url + "/api/jobs/storyboard", json={"story": story, "score": True, "clip": "/etc"})
    assert refused.status_code == 403
