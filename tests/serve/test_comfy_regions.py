"""ComfyUI's regional conditioning nodes (ConditioningSetMask / SetArea / SetAreaPercentage, combined
with ConditioningCombine) run by the regional attention `generate --region` uses: a workflow with two
masked prompts draws the picture `generate` draws with the same regions. In-process tiny model, 4 steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loraflow.generate.options import GenerateConfig
from loraflow.generate.regions import RegionPrompt, region_masks
from loraflow.serve.comfy.values import CondArea, NodeError, WorkflowJob
from serve_helpers import in_process_ctx

MODEL, STEPS, SEED, CFG = "tiny:sdxl", 4, 7, 4.0
BASE, NEGATIVE, LEFT, RIGHT = "an astronaut, portrait", "blurry", "a blue dog", "a red ball"


def _upload_mask(ctx, name: str, side: str) -> None:
    """A 64x64 RGBA upload whose LoadImage MASK (1 - alpha, as ComfyUI's) is 1 on `side`'s half."""
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, slice(0, 32) if side == "left" else slice(32, 64)] = 0  # transparent = masked
    rgba = np.dstack([np.zeros((64, 64, 3), np.uint8), alpha])
    Image.fromarray(rgba, "RGBA").save(ctx.paths.inputs / name)


def _graph(set_cond_area: str = "default") -> dict:
    from loraflow.serve.comfy.export import api_workflow

    graph = api_workflow(MODEL, None, BASE, NEGATIVE, seed=SEED, steps=STEPS, cfg=CFG, width=64, height=64,
                         filename_prefix="regions/img")
    clip = graph["6"]["inputs"]["clip"]
    graph.update({
        "20": {"class_type": "LoadImage", "inputs": {"image": "left.png"}},
        "21": {"class_type": "LoadImage", "inputs": {"image": "right.png"}},
        "22": {"class_type": "CLIPTextEncode", "inputs": {"text": LEFT, "clip": clip}},
        "23": {"class_type": "CLIPTextEncode", "inputs": {"text": RIGHT, "clip": clip}},
        "24": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["22", 0], "mask": ["20", 1],
                                                               "strength": 1.0, "set_cond_area": set_cond_area}},
        "25": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["23", 0], "mask": ["21", 1],
                                                               "strength": 1.0, "set_cond_area": "default"}},
        "26": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["24", 0]}},
        "27": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["26", 0], "conditioning_2": ["25", 0]}},
    })
    graph["3"]["inputs"]["positive"] = ["27", 0]
    return graph


def _run(ctx, graph: dict) -> np.ndarray:
    from loraflow.serve.comfy.executor import run_prompt

    result = run_prompt(ctx, WorkflowJob(graph, ["9"]))
    saved = result["outputs"]["9"]["images"][0]
    with Image.open(ctx.paths.outputs / saved["subfolder"] / saved["filename"]) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_two_masked_conditionings_combined_draw_what_generate_draws_with_those_regions(tiny_session, tmp_path):
    session = tiny_session("sdxl")
    ctx = in_process_ctx({MODEL: session}, tmp_path)
    _upload_mask(ctx, "left.png", "left")
    _upload_mask(ctx, "right.png", "right")
    workflow = _run(ctx, _graph())

    def generate(regions):
        cfg = GenerateConfig(model=MODEL, prompt=BASE, negative_prompt=NEGATIVE, seed=SEED, num_inference_steps=STEPS,
                             guidance_scale=CFG, height=64, width=64, scheduler="Euler", regions=regions)
        return np.asarray(session.generate(cfg)[0].image, dtype=np.int16)

    same = generate([RegionPrompt(region="left", prompt=LEFT), RegionPrompt(region="right", prompt=RIGHT)])
    swapped = generate([RegionPrompt(region="left", prompt=RIGHT), RegionPrompt(region="right", prompt=LEFT)])
    # the same latents, decoded by VAEDecode with the pipeline's own arithmetic (x / 2 + 0.5, * 255, round): equal
    assert np.array_equal(workflow, same)
    assert np.abs(workflow - swapped).mean() > 0.5  # the masks place the prompts (measured: 1.7 grey levels)


def test_areas_in_pixels_fractions_and_masks_cover_the_same_latent_cells():
    """SetArea's pixel box, SetAreaPercentage's fractions and a MASK of the left half cover the cells the
    area `left` covers (generate.regions), times strength; a box edge inside a cell covers it partly."""
    from loraflow.serve.comfy.regions import coverage

    left = torch.from_numpy(region_masks(["left"], 8, 8))[0]
    mask = torch.zeros((1, 64, 64))
    mask[..., :32] = 1
    for area in (CondArea(box=(0, 0, 32, 64), fractions=False), CondArea(box=(0, 0, 0.5, 1.0)), CondArea(mask=mask)):
        assert torch.equal(coverage(area, 64, 64, 8), left)
    assert torch.equal(coverage(CondArea(mask=mask, strength=0.25), 64, 64, 8), left * 0.25)
    edge = coverage(CondArea(box=(0, 0, 36, 64), fractions=False), 64, 64, 8)  # 4 of the 5th column's 8 pixels
    assert torch.equal(edge[0], torch.tensor([1, 1, 1, 1, 0.5, 0, 0, 0]))


@pytest.mark.parametrize("change, node, message", [
    ({"24": {"set_cond_area": "mask bounds"}}, "24", "ConditioningSetMask: set_cond_area 'mask bounds' is not supported"),
    ({"24": {"strength": 2.0}}, "24", "ConditioningSetMask: strength 2 is not supported here"),
    ({"27": {"conditioning_2": ["23", 0]}}, "3",  # an unmasked second prompt: two bases
     "KSampler: positive: regions need exactly one conditioning without a mask or area"),
])
def test_what_regional_attention_cannot_do_is_a_one_line_error_on_its_node(tiny_session, tmp_path, change, node,
                                                                           message):
    from loraflow.serve.comfy.executor import WorkflowFailed, run_prompt

    ctx = in_process_ctx({MODEL: tiny_session("sdxl")}, tmp_path)
    _upload_mask(ctx, "left.png", "left")
    _upload_mask(ctx, "right.png", "right")
    graph = _graph()
    for changed, inputs in change.items():
        graph[changed]["inputs"].update(inputs)
    with pytest.raises(WorkflowFailed) as e:
        run_prompt(ctx, WorkflowJob(graph, ["9"]))
    error = e.value.result["error"]
    assert error["node_id"] == node
    assert error["message"].startswith(message) and "\n" not in error["message"]


def test_a_masked_negative_is_refused(tiny_session):
    from loraflow.serve.comfy.regions import regional_inputs
    from loraflow.serve.comfy.values import Conditioning

    session = tiny_session("sdxl")
    [embeds] = session.encode([NEGATIVE])
    plain, masked = Conditioning(embeds, MODEL), Conditioning(embeds, MODEL, area=CondArea())
    with pytest.raises(NodeError, match=r"^KSampler: negative: masked or combined conditionings are not supported"):
        regional_inputs(session, "KSampler", plain, masked, 64, 64)
