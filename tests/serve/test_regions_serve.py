"""Regional prompts over HTTP: a region is an area name or an uploaded mask image, for a prompt and for
an IP-Adapter reference; a mask that is no upload is a 422 naming the field."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from serve_helpers import TINY, wait_job


def _upload(server, name: str, pixels) -> None:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert server.post("/upload/image", files={"image": (name, buf.getvalue())}).status_code == 200


def _generate(server, **extra) -> bytes:
    r = server.post("/api/jobs/generate", json={**TINY, **extra})
    assert r.status_code == 202, r.text
    job = wait_job(server, r.json()["id"])
    assert job["status"] == "done", job["error"]
    return Image.open(io.BytesIO(server.get(job["result"]["images"][0]["url"]).content)).tobytes()


def test_a_region_is_an_area_or_an_uploaded_mask_for_prompts_and_references(server):
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255  # the same cells as the area `left` at TINY's 64x64
    _upload(server, "left.png", left)
    _upload(server, "ref.png", (np.random.RandomState(0).rand(48, 48, 3) * 255).astype(np.uint8))
    plain = _generate(server)
    by_name = _generate(server, regions=[{"region": "left", "prompt": "a blue dog"}],
                        ip_adapter="tiny-ipa", reference=[{"image": "ref.png", "mask": "left"}])
    by_mask = _generate(server, regions=[{"region": "left.png", "prompt": "a blue dog"}],
                        ip_adapter="tiny-ipa", reference=[{"image": "ref.png", "mask": "left.png"}])
    assert by_name == by_mask and by_name != plain
    r = server.post("/api/jobs/generate", json={**TINY, "regions": ["nope.png:a blue dog"]})
    assert r.status_code == 422 and "regions.0.region" in r.text
