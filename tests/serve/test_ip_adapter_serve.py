"""IP-Adapter over HTTP: generate and storyboard jobs take an adapter from models_dir/ipadapter and
reference images from the uploads; ComfyUI_IPAdapter_plus's node names run in /prompt workflows."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serve_helpers import TINY, wait_job


def _png(seed: int, size: int = 48, mask: bool = False) -> bytes:
    if mask:
        pixels = np.zeros((size, size), np.uint8)
        pixels[:, : size // 2] = 255
    else:
        pixels = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def uploaded(server):
    for name, data in (("ref-a.png", _png(0)), ("ref-b.png", _png(1)), ("left.png", _png(0, 64, mask=True))):
        assert server.post("/upload/image", files={"image": (name, data)}).status_code == 200
    return server


def _generate(server, **extra) -> tuple[dict, bytes]:
    r = server.post("/api/jobs/generate", json={**TINY, **extra})
    assert r.status_code == 202, r.text
    job = wait_job(server, r.json()["id"])
    assert job["status"] == "done", job["error"]
    image = job["result"]["images"][0]
    return image, Image.open(io.BytesIO(server.get(image["url"]).content)).tobytes()


def test_generate_job_with_references(uploaded):
    _, base = _generate(uploaded)
    info, steered = _generate(uploaded, ip_adapter="tiny-ipa", reference=["ref-a.png:0.8"])
    _, other = _generate(uploaded, ip_adapter="tiny-ipa", reference=[{"image": "ref-b.png", "scale": 0.8}])
    _, zero = _generate(uploaded, ip_adapter="tiny-ipa", reference=["ref-a.png:0"])
    _, masked = _generate(uploaded, ip_adapter="tiny-ipa", reference=[{"image": "ref-a.png", "mask": "left.png"}])
    assert steered != base and other != steered and masked != base
    assert zero == base  # scale 0: the adapter is not attached, same bytes
    assert "IP-Adapter 0: " in info["infotext"] and "Image: ref-a.png, Weight: 0.8" in info["infotext"]
    assert "input" not in info["infotext"]  # the upload folder is not shown


@pytest.mark.parametrize("body, field", [
    ({"ip_adapter": "tiny-ipa", "reference": ["missing.png"]}, "reference.0.image"),
    ({"ip_adapter": "tiny-ipa", "reference": [{"image": "ref-a.png", "mask": "nope.png"}]}, "reference.0.mask"),
    ({"ip_adapter": "tiny-ipa", "reference": ["ref-a.png:11"]}, "reference"),
    ({"ip_adapter": "tiny-ipa", "reference": ["ref-a.png"] * 17}, "reference"),  # a hostile count
])
def test_bad_references_are_422_naming_the_field(uploaded, body, field):
    r = uploaded.post("/api/jobs/generate", json={**TINY, **body})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_missing_adapter_is_404_and_outside_paths_are_refused(uploaded):
    r = uploaded.post("/api/jobs/generate", json={**TINY, "ip_adapter": "nope", "reference": ["ref-a.png"]})
    assert r.status_code == 404 and "IP-Adapter 'nope' not found" in r.json()["error"]
    for hostile in ("../../etc", "/etc", "tiny-ipa/../../.."):
        r = uploaded.post("/api/jobs/generate", json={**TINY, "ip_adapter": hostile, "reference": ["ref-a.png"]})
        assert r.status_code == 403, (hostile, r.text)


def test_storyboard_job_steers_the_characters_panels(uploaded):
    story = {"defaults": {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 3}, "ip_adapter": "tiny-ipa",
             "characters": [{"name": "kit", "description": "an orange kitten", "references": ["ref-a.png"],
                             "reference_strength": 0.8}],
             "scenes": [{"prompt": "{kit} in a garden"}, {"prompt": "an empty street"}]}
    r = uploaded.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": story})
    assert r.status_code == 202, r.text
    done = wait_job(uploaded, r.json()["id"], timeout=120)
    assert done["status"] == "done", done["error"]
    first, second = done["result"]["story"]["scenes"]
    assert first["ip_references"][0]["scale"] == 0.8 and first["ip_adapter"].endswith("tiny-ipa")
    assert "ip_references" not in second and "IP-Adapter 0: " in first["infotext"]


def _ipa_graph(weight: float, node: str = "IPAdapter") -> dict:
    from loraflow.serve.comfy.export import api_workflow

    graph = api_workflow("tiny-sdxl", None, "an orange cat", "blurry", seed=1, steps=2, cfg=5.0,
                         width=64, height=64, filename_prefix="wf/ipa")
    graph["20"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "tiny-ipa"}}
    graph["21"] = {"class_type": "LoadImage", "inputs": {"image": "ref-a.png"}}
    inputs = {"model": ["4", 0], "ipadapter": ["20", 0], "image": ["21", 0], "weight": weight,
              "start_at": 0.0, "end_at": 1.0}
    if node == "IPAdapter":
        inputs["weight_type"] = "standard"
    else:
        inputs.update(weight_type="linear", combine_embeds="concat", embeds_scaling="V only")
    graph["24"] = {"class_type": node, "inputs": inputs}
    graph["3"]["inputs"]["model"] = ["24", 0]
    return graph


def _run_graph(server, graph) -> tuple[dict, bytes | None]:
    r = server.post("/prompt", json={"prompt": graph})
    assert r.status_code == 200, r.text
    job = wait_job(server, r.json()["prompt_id"])
    if job["status"] != "done":
        return job, None
    history = server.get(f"/history/{job['id']}").json()[job["id"]]
    data = server.get("/view", params=history["outputs"]["9"]["images"][0]).content
    return job, Image.open(io.BytesIO(data)).tobytes()


def test_ipadapter_nodes_steer_and_weight_zero_does_not(uploaded):
    info = uploaded.get("/object_info").json()
    assert info["IPAdapterModelLoader"]["input"]["required"]["ipadapter_file"][0] == ["tiny-ipa"]
    advanced = info["IPAdapterAdvanced"]["input"]
    assert list(advanced["required"]) == ["model", "ipadapter", "image", "weight", "weight_type", "combine_embeds",
                                          "start_at", "end_at", "embeds_scaling"]
    assert set(advanced["optional"]) == {"image_negative", "attn_mask", "clip_vision"}

    from loraflow.serve.comfy.export import api_workflow

    plain = api_workflow("tiny-sdxl", None, "an orange cat", "blurry", seed=1, steps=2, cfg=5.0,
                         width=64, height=64, filename_prefix="wf/ipa")
    _, base = _run_graph(uploaded, plain)
    _, steered = _run_graph(uploaded, _ipa_graph(0.8))
    _, advanced_img = _run_graph(uploaded, _ipa_graph(0.8, node="IPAdapterAdvanced"))
    _, zero = _run_graph(uploaded, _ipa_graph(0.0))
    assert steered != base and advanced_img == steered  # the same adapter, image and weight
    assert zero == base

    with_vision = _ipa_graph(0.8, node="IPAdapterAdvanced")  # core CLIPVisionLoader replaces the adapter's encoder
    with_vision["25"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny-vision"}}
    with_vision["24"]["inputs"]["clip_vision"] = ["25", 0]
    _, other_encoder = _run_graph(uploaded, with_vision)
    assert other_encoder not in (steered, base)
    assert info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0] == ["tiny-vision"]

    window = _ipa_graph(0.8)
    window["24"]["inputs"]["start_at"] = 0.5
    job, _ = _run_graph(uploaded, window)
    assert job["status"] == "failed" and "node 24 (IPAdapter)" in job["error"] and "start_at" in job["error"]


def test_ipadapter_node_inputs_become_references_with_masks():
    """What the samplers hand the session: each image of an IMAGE batch is a reference with its node's
    weight; attn_mask (1 = acts) is resized to the output; two adapters on one model are a node error."""
    import torch

    from loraflow.serve.comfy.sampling import ip_references
    from loraflow.serve.comfy.values import IPAdapterRef, IPAdapterUse, NodeError

    images = torch.rand(2, 24, 24, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :8] = 1.0  # left half
    adapter = IPAdapterRef("/models/ipadapter/a")
    refs = ip_references((IPAdapterUse(adapter, images, 0.7, mask, "24"),), 64, 32)
    assert [r.scale for r in refs.references] == [0.7, 0.7] and refs.adapter == adapter.path
    assert refs.images[1].size == (24, 24)
    expected = (images[1].numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(refs.images[1]), expected)
    resized = np.asarray(refs.masks[0])
    assert resized.shape == (32, 64) and resized[:, :28].min() == 255 and resized[:, 36:].max() == 0
    assert ip_references((), 64, 64) is None
    with pytest.raises(NodeError, match="one IP-Adapter"):
        ip_references((IPAdapterUse(adapter, images, 1.0), IPAdapterUse(IPAdapterRef("/other"), images, 1.0)), 64, 64)
