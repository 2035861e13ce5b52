"""Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) for the web UI tests."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import playwright.sync_api as sync_api  # the dev install's; Chromium itself is a system package
import pytest

CHROMIUM = os.environ.get("LORAFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

needs_chromium = pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (apt-get install chromium)")


@contextmanager
def browse(url: str, height: int = 900):
    """A page on `url`; JavaScript errors on it fail the test when the block ends."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": height})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.url_root = url
        yield page
        browser.close()
        assert not errors, errors


def screenshot(page, tmp_path, name: str):
    """A full-page screenshot; also copied to $LORAFLOW_SCREENSHOTS to look at after a run."""
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000
    folder = os.environ.get("LORAFLOW_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copy(shot, folder)
    return shot


def fill_generate_form(page, prompt: str, *, model: str = "tiny-sdxl", **fields: str) -> None:
    """The Generate tab: pick `model`, type `prompt`, and fill each `#<name>` input with its value
    (`num_inference_steps="2", seed="42"`, ...), once the model list has loaded."""
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.select_option("#model", model)
    page.fill("#prompt", prompt)
    for name, value in fields.items():
        page.fill(f"#{name}", value)
