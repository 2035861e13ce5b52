"""The web UI in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): load
the page, generate on the tiny model, wait for the image, run a storyboard, take screenshots."""
from __future__ import annotations

import os
import shutil

from pathlib import Path

import playwright.sync_api as sync_api  # the dev install's; Chromium itself is a system package
import pytest
import yaml

CHROMIUM = os.environ.get("LORAFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DEMO_STORY = Path(__file__).resolve().parents[2] / "examples" / "stories" / "demo-shapes.yaml"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (apt-get install chromium)")


@pytest.fixture
def page(start_server):
    url, _ = start_server()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.url_root = url
        yield page
        browser.close()
        assert not errors, errors


def test_generate_in_the_browser(page, tmp_path):
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.select_option("#model", "tiny-sdxl")
    page.fill("#prompt", "an orange cat")
    page.fill("#negative_prompt", "blurry")
    page.click("#add-lora")
    page.fill(".lora-row input", "0.7")
    page.select_option("#scheduler", "DPM++ 2M Karras")
    for field, value in (("#num_inference_steps", "2"), ("#guidance_scale", "5"), ("#width", "64"),
                         ("#height", "64"), ("#seed", "42")):
        page.fill(field, value)
    assert "denoising steps" in page.get_attribute("#num_inference_steps", "title")  # help from GenerateConfig
    page.click("#run")
    page.wait_for_selector("#gallery .card img", timeout=60_000)
    page.wait_for_function("document.querySelector('#gallery .card img').naturalWidth === 64", timeout=30_000)
    info = page.inner_text("#gallery .card pre")
    assert "an orange cat" in info and "Seed: 42" in info and "<lora:style:0.7>" in info and "Karras" in info
    assert page.inner_text("#status-text") == "done"
    # the live preview ends on the finished picture, not on the last noisy latent
    page.wait_for_function("document.querySelector('#preview').src === document.querySelector('#gallery .card img').src",
                           timeout=10_000)
    shot = tmp_path / "generate.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000
    _keep(shot)


def test_storyboard_in_the_browser(page, tmp_path):
    page.click("button[data-tab=storyboard]")
    page.wait_for_function("document.querySelectorAll('#story-model option').length > 0")
    # it opens on the demo story, whose words the default (demo) model knows
    assert page.input_value("#story-model") == "demo"
    assert yaml.safe_load(page.input_value("#story")) == yaml.safe_load(DEMO_STORY.read_text(encoding="utf-8"))
    page.click("#run-story")
    page.wait_for_function("document.querySelector('#story-grid') && document.querySelector('#story-grid').naturalWidth === 512",
                           timeout=120_000)
    shot = tmp_path / "storyboard.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)


def _keep(shot):
    folder = os.environ.get("LORAFLOW_SCREENSHOTS")  # set to look at the pictures after a run
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copy(shot, folder)
