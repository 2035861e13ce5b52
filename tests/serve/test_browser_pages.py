"""The web UI's LoRA list, reference images (ControlNet, img2img, a drawn inpainting mask) and the
training page (form, live loss chart, validation images, checkpoints, cancel and resume), in a real
headless Chromium on the tiny model."""
from __future__ import annotations

import csv
import json

import httpx
import playwright.sync_api as sync_api
import pytest
from PIL import Image

from browser_helpers import browse, fill_generate_form, needs_chromium, screenshot

pytestmark = needs_chromium


def test_lora_list_shows_lora_info_and_adds_the_lora_with_its_weight(start_server, tmp_path):
    url, _ = start_server()
    with browse(url) as page:
        page.click("button[data-tab=loras-tab]")
        card = page.locator(".lora-card[data-name='style.safetensors']")
        card.wait_for(timeout=30_000)
        # make_tiny_lora (conftest) saves rank 4, alpha 4, diffusers keys, an SDXL LoRA
        assert card.locator(".field-rank td").inner_text() == "4"
        assert card.locator(".field-alpha td").inner_text() == "4"
        assert card.locator(".field-type td").inner_text() == "lora"
        assert card.locator(".field-family td").inner_text() == "sdxl"
        assert card.locator(".field-base_model td").inner_text() != ""
        assert "targets:" in card.locator("details pre").text_content()  # the full `lora info` text
        card.locator("input.weight").fill("0.6")
        card.locator("button.use").click()
        screenshot(page, tmp_path, "loras")
        page.click("button[data-tab=generate]")
        fill_generate_form(page, "a red circle", num_inference_steps="2", width="64", height="64", seed="1")
        page.click("#run")
        page.wait_for_selector("#gallery .card pre", timeout=60_000)
        assert "<lora:style:0.6>" in page.inner_text("#gallery .card pre")


def test_reference_images_controlnet_img2img_and_a_drawn_mask(start_server, tmp_path):
    url, thread = start_server()
    if "tiny-cn" not in httpx.get(url + "/api/catalog").json()["controlnets"]:
        pytest.skip("ControlNet support not in this build")
    reference = tmp_path / "reference.png"
    Image.new("RGB", (64, 64), "white").save(reference)
    Image.new("RGB", (32, 32), "black").save(tmp_path / "dot.png")
    with Image.open(reference) as im:
        im.paste(Image.open(tmp_path / "dot.png"), (16, 16))
        im.save(reference)
    with browse(url) as page:
        page.wait_for_function("document.querySelectorAll('#control-type option').length > 1")
        fill_generate_form(page, "a black square", num_inference_steps="4", width="64", height="64", seed="3")
        page.click("#reference summary")
        page.select_option("#control-type", "canny")
        page.select_option("#control-model", "tiny-cn")
        page.set_input_files("#control-image", str(reference))
        page.set_input_files("#init-image", str(reference))
        page.fill("#strength", "0.5")
        box = page.locator("#mask-canvas").bounding_box()  # paint the left half, top to bottom
        page.fill("#brush", "64")
        for y in range(0, 257, 16):
            page.mouse.move(box["x"] + 2, box["y"] + y)
            page.mouse.down()
            page.mouse.move(box["x"] + 100, box["y"] + y, steps=4)
            page.mouse.up()
        page.click("#run")
        page.wait_for_selector("#gallery .card pre", timeout=90_000)
        info = page.inner_text("#gallery .card pre")
        screenshot(page, tmp_path, "reference")
    assert "ControlNet 0: \"Module: canny" in info and "tiny-cn" in info
    assert "Denoising strength: 0.5" in info and "Mask blur" in info
    payload = httpx.get(url + "/api/jobs?kind=generate").json()["jobs"][0]["payload"]
    assert payload["strength"] == 0.5 and payload["control"][0]["type"] == "canny"
    with Image.open(payload["mask"]) as m:  # the drawn mask, at the init image's size: left half white
        mask = m.convert("L")
        assert mask.size == (64, 64)
        assert mask.getpixel((4, 32)) == 255 and mask.getpixel((60, 32)) == 0


@pytest.fixture
def train_url(start_server, tmp_path):
    """A server with a data folder holding `shapes`: four solid-colour images with captions."""
    train = tmp_path / "data" / "shapes" / "train"
    train.mkdir(parents=True)
    with open(train / "metadata.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        for i, colour in enumerate(["red", "green", "blue", "yellow"]):
            Image.new("RGB", (64, 64), colour).save(train / f"{i}.png")
            writer.writerow([f"{i}.png", f"a {colour} square"])
    url, _ = start_server(data_dir=str(tmp_path / "data"))
    return url


def test_training_page_runs_shows_loss_samples_and_checkpoints(train_url, tmp_path):
    with browse(train_url, height=1000) as page:
        page.click("button[data-tab=train]")
        page.wait_for_function("document.querySelectorAll('#train-model option').length > 0")
        page.wait_for_function("document.querySelector('#train-lora_rank').title !== ''")
        assert "LoRA rank" in page.get_attribute("#train-lora_rank", "title")  # help from TrainConfig
        page.fill("#train-dataset", "shapes")
        page.select_option("#train-model", "tiny-sdxl")
        for field, value in (("max_steps", "4"), ("resolution", "64"), ("lora_rank", "4"), ("batch_size", "2"),
                             ("save_every", "1"), ("validation_every", "2"), ("validation_steps", "2")):
            page.fill(f"#train-{field}", value)
        page.fill("#train-validation_prompt", "a red square")
        page.click("#run-train")
        _wait_training(page, "document.querySelector('#train-status').textContent === 'done'")
        page.wait_for_function("document.querySelectorAll('#samples img').length === 2", timeout=10_000)
        assert page.get_attribute("#loss-chart", "data-points") == "4"  # one `loss` event per step
        # validation at step 2 and at the end; the last 2 checkpoints kept (keep_checkpoints 2)
        assert page.locator("#samples figcaption").all_inner_texts() == ["step-000002.png", "step-000004.png"]
        assert page.locator("#checkpoints tbody td:first-child").all_inner_texts() == ["step-000003", "step-000004"]
        assert page.is_disabled("#cancel-train") and page.is_disabled("#resume-train")
        page.wait_for_function("[...document.querySelectorAll('#samples img')].every((i) => i.naturalWidth === 64)")
        screenshot(page, tmp_path, "train")
    job = httpx.get(train_url + "/api/jobs?kind=train").json()["jobs"][0]
    assert job["result"]["steps"] == 4


def _wait_training(page, condition: str, timeout: int = 180_000) -> None:
    """Wait for a JS condition on the training page; a timeout says what the page showed instead."""
    try:
        page.wait_for_function(condition, timeout=timeout)
    except sync_api.TimeoutError:
        raise AssertionError(f"{condition}: status {page.inner_text('#train-status')!r}, "
                             f"error {page.text_content('#train-error')!r}") from None


def test_training_page_cancels_and_resumes_from_a_pasted_yaml(train_url, tmp_path):
    config = "dataset: shapes\nmodel: tiny-sdxl\nresolution: 64\nlora_rank: 4\nbatch_size: 2\nmax_steps: 500\nsave_every: 1\n"
    with browse(train_url) as page:
        page.click("button[data-tab=train]")
        page.click("#train-yaml-box summary")
        page.fill("#train-yaml", config)
        page.click("#run-train")
        _wait_training(page, "Number(document.querySelector('#loss-chart').dataset.points) >= 2", 20_000)
        page.click("#cancel-train")
        page.wait_for_function("document.querySelector('#train-status').textContent === 'cancelled'", timeout=60_000)
        page.wait_for_function("!document.querySelector('#resume-train').disabled")
        page.wait_for_selector("#checkpoints tbody tr")
        last = max(int(s) for s in page.locator("#checkpoints tbody td:nth-child(2)").all_inner_texts())
        before = int(page.get_attribute("#loss-chart", "data-points"))
        page.click("#resume-train")
        _wait_training(page, f"Number(document.querySelector('#loss-chart').dataset.points) >= {before + 2}")
        page.click("#cancel-train")
        page.wait_for_function("document.querySelector('#train-status').textContent === 'cancelled'", timeout=60_000)
        steps = page.evaluate("training.losses.map((d) => d.step)")
        first = page.evaluate("training.firstSteps")
        screenshot(page, tmp_path, "train-resumed")
    assert first == [1, last + 1]  # the resumed run continued after its last checkpoint, not from step 1
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= before + 1  # one point per step, no repeats
