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


STORY = {"defaults": {"height": 64, "width": 64, "num_inference_steps": 2},
         "characters": [{"name": "hero", "description": "an orange cat"}, {"name": "pal", "description": "a blue dog"}],
         "scenes": [{"prompt": "{hero} and {pal} play", "cast": ["hero", "pal"]}]}


def _story(regions: dict, **scene) -> dict:
    return {**STORY, "scenes": [{**STORY["scenes"][0], "regions": regions, **scene}]}


def test_a_storyboard_region_mask_is_checked_at_submit(server, tmp_path):
    """A scene's mask that is no upload, or no image, is a 422 naming the field before the job is queued,
    and the answer does not tell where the server keeps its uploads."""
    (tmp_path / "outputs" / "input").mkdir(parents=True, exist_ok=True)
    (tmp_path / "outputs" / "input" / "broken.png").write_bytes(b"not a png at all")
    for mask in ("missing.png", "broken.png"):
        r = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": _story({"hero": mask, "pal": "right"})})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "story.scenes.0.regions.hero" and mask in r.text
        assert str(tmp_path) not in r.text
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    _upload(server, "left.png", left)
    r = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": _story({"hero": "left.png", "pal": "right"})})
    assert r.status_code == 202, r.text
    done = wait_job(server, r.json()["id"])
    assert done["status"] == "done", done["error"]
    assert [x["region"] for x in done["result"]["story"]["scenes"][0]["regions"]][1] == "right"


def test_scene_images_are_checked_at_submit(server, tmp_path):
    """A scene's start image or control image that is not in the uploads or outputs: a 422 naming its
    key when the job is submitted (not a failed job later), without the server's folders."""
    bodies = {"story.scenes.0.init_image": _story({}, init_image="gone.png", strength=0.5),
              "story.scenes.0.control.0.image": _story({}, control=[{"type": "canny", "image": "gone.png"}])}
    for field, story in bodies.items():
        r = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": story})
        assert r.status_code == 422 and r.json()["field"] == field, r.text
        assert "gone.png" in r.text and str(tmp_path) not in r.text


def test_a_failed_job_names_files_without_the_servers_folders(server, tmp_path):
    """A scene's start image that exists but does not decode fails when the panel runs: the job's error
    names the file, never the server's absolute path to it."""
    (tmp_path / "outputs" / "input").mkdir(parents=True, exist_ok=True)
    (tmp_path / "outputs" / "input" / "broken.png").write_bytes(b"not a png at all")
    r = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl",
                                                  "story": _story({}, init_image="broken.png", strength=0.5)})
    assert r.status_code == 202, r.text
    failed = wait_job(server, r.json()["id"])
    assert failed["status"] == "failed" and "broken.png" in failed["error"], failed
    assert str(tmp_path) not in failed["error"] and str(tmp_path.resolve()) not in failed["error"]
