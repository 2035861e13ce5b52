"""ComfyUI workflows on models whose latents are not SD's (B, 4, H/8, W/8): the demo model's VAE has 8
channels and downscales by 4. EmptyLatentImage stays model-less (4 channels, /8) and the samplers refit
an empty latent to the model; VAE nodes and previews use the pipeline's vae_scale_factor.

The models are built in-process (random weights) and run by the executor with a small stand-in for the
worker's job context, so no server and no files are needed."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from loraflow.serve.comfy.values import Latent, WorkflowJob
from serve_helpers import in_process_ctx as _ctx


@pytest.fixture(scope="module")
def sessions():
    """name -> GenerationSession: "demo-test" (8 latent channels, VAE scale 4) and "tiny-test" (4, 8)."""
    from diffusers import StableDiffusionXLPipeline

    from loraflow.demo.train_model import build_components
    from loraflow.generate.session import GenerationSession
    from loraflow.models.families import get_family
    from loraflow.models.loading import LoadedModel
    from loraflow.models.tiny import build_tiny_pipeline

    torch.set_num_threads(1)
    demo = StableDiffusionXLPipeline(**build_components(0, 64))
    assert (demo.unet.config.in_channels, demo.vae_scale_factor) == (8, 4)
    built = {"demo-test": demo, "tiny-test": build_tiny_pipeline("sdxl")}
    out = {}
    for name, pipe in built.items():
        pipe.set_progress_bar_config(disable=True)
        out[name] = GenerationSession(LoadedModel(pipe, get_family("sdxl"), name, name))
    return out


def _graph(model: str) -> dict:
    from loraflow.serve.comfy.export import api_workflow

    return api_workflow(model, None, "a red circle", "blurry", seed=1, steps=2, cfg=5.0, width=64, height=64,
                        filename_prefix="shapes/img")


def _saved_size(ctx, result, node: str = "9") -> tuple[int, int]:
    image = result["outputs"][node]["images"][0]
    with Image.open(ctx.paths.outputs / image["subfolder"] / image["filename"]) as saved:
        return saved.size


def _latent(ctx, node: str):
    return ctx.state.comfy_cache[node].outputs[0].samples  # LATENT


@pytest.mark.parametrize("model, latent_shape", [("demo-test", (1, 8, 16, 16)), ("tiny-test", (1, 4, 8, 8))])
def test_text_to_image_workflow_fits_the_empty_latent_to_the_model(sessions, tmp_path, model, latent_shape):
    from loraflow.serve.comfy.executor import run_prompt

    ctx = _ctx(sessions, tmp_path, _graph(model))
    result = run_prompt(ctx, WorkflowJob.from_payload(ctx.job.payload))
    assert result["status"]["status_str"] == "success"
    assert _latent(ctx, "5").shape == (1, 4, 8, 8)  # EmptyLatentImage does not know the model
    assert _latent(ctx, "3").shape == latent_shape
    assert _saved_size(ctx, result) == (64, 64)
    assert ctx.previews and all(p[:2] == b"\xff\xd8" for p in ctx.previews)  # JPEG previews on the way


def test_img2img_workflow_on_8_channel_latents(sessions, tmp_path):
    """VAEEncode makes (B, 8, H/4, W/4); KSampler with denoise < 1 and KSamplerAdvanced (start step > 0)
    denoise it, whichever pipeline path diffusers takes for latents that are not 4-channel."""
    from loraflow.serve.comfy.executor import run_prompt

    graph = _graph("demo-test")
    graph["9"]["inputs"]["images"] = ["13", 0]
    graph.update({
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}},
        "12": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["4", 0], "add_noise": "enable", "noise_seed": 2, "steps": 2, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["11", 0], "start_at_step": 1, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["4", 2]}},
    })
    ctx = _ctx(sessions, tmp_path, graph)
    result = run_prompt(ctx, WorkflowJob.from_payload(ctx.job.payload))
    assert result["status"]["status_str"] == "success"
    assert _latent(ctx, "11").shape == _latent(ctx, "12").shape == (1, 8, 16, 16)
    assert not torch.equal(_latent(ctx, "11"), _latent(ctx, "12"))
    assert _saved_size(ctx, result) == (64, 64)


def test_latent_preview_of_any_channel_count_is_a_jpeg():
    from loraflow.serve.preview import latent_to_jpeg

    for channels in (4, 8, 9, 2, 1):
        jpeg = latent_to_jpeg(torch.randn(2, channels, 16, 12, generator=torch.Generator().manual_seed(0)), "sdxl")
        image = Image.open(io.BytesIO(jpeg))
        assert image.format == "JPEG" and max(image.size) == 256, channels
    assert latent_to_jpeg(torch.zeros(1, 8, 16, 16), "sdxl")[:2] == b"\xff\xd8"  # flat: no division by zero


def test_non_empty_latent_of_wrong_channel_count_is_a_node_error(sessions, tmp_path):
    from loraflow.serve.comfy.nodes import CLIPTextEncode, KSampler, KSamplerAdvanced, NodeError
    from loraflow.serve.comfy.values import ModelRef

    ctx = _ctx(sessions, tmp_path)
    ref = ModelRef("demo-test")
    cond = CLIPTextEncode().run(ctx, "6", text="a red circle", clip=ref)[0]
    latent = Latent(torch.ones((1, 4, 8, 8)))  # e.g. VAEEncode of a 4-channel model
    with pytest.raises(NodeError) as err:
        KSampler().run(ctx, "3", ref, 1, 2, 5.0, "euler", "normal", cond, cond, latent, 1.0)
    message = str(err.value)
    assert "\n" not in message and "KSampler" in message and "4 channels" in message and "expects 8" in message
    with pytest.raises(NodeError, match=r"^KSamplerAdvanced: latent_image has 4 channels, this model expects 8"):
        KSamplerAdvanced().run(ctx, "3", ref, "enable", 1, 2, 5.0, "euler", "normal", cond, cond, latent, 0, 10000,
                               "disable")


def test_advanced_sampler_split_equals_one_sampler_and_controlnet_img2img_runs(sessions, tmp_path):
    """ComfyUI's base + refiner pattern: KSamplerAdvanced to step 1 with its leftover noise, then from
    step 1 without adding noise, equals one KSampler over both steps. ControlNet hints apply to a
    denoise < 1 (img2img) run too."""
    from loraflow.generate.control.tiny import save_tiny_controlnet
    from loraflow.serve.comfy.nodes import (
        CLIPTextEncode, ControlNetApplyAdvanced, EmptyLatentImage, KSampler, KSamplerAdvanced,
    )
    from loraflow.serve.comfy.values import ControlNetRef, ModelRef

    ctx = _ctx(sessions, tmp_path)
    ref = ModelRef("tiny-test")
    pos = CLIPTextEncode().run(ctx, "6", text="a red circle", clip=ref)[0]
    neg = CLIPTextEncode().run(ctx, "7", text="blurry", clip=ref)[0]
    empty = EmptyLatentImage().run(ctx, "5", width=64, height=64, batch_size=1)[0]
    whole = KSampler().run(ctx, "3", ref, 5, 2, 5.0, "euler", "normal", pos, neg, empty, 1.0)[0].samples
    advanced = KSamplerAdvanced()
    base = advanced.run(ctx, "10", ref, "enable", 5, 2, 5.0, "euler", "normal", pos, neg, empty, 0, 1, "enable")[0]
    refined = advanced.run(ctx, "11", ref, "disable", 5, 2, 5.0, "euler", "normal", pos, neg, base, 1, 10000,
                           "disable")[0].samples
    assert torch.allclose(refined, whole, atol=1e-4)
    assert not torch.allclose(base.samples, whole, atol=1e-2)

    cn = ControlNetRef(str(save_tiny_controlnet("sdxl", tmp_path / "cn")))
    hint = torch.ones((1, 64, 64, 3))
    cpos, cneg = ControlNetApplyAdvanced().run(ctx, "12", pos, neg, cn, hint, 1.0, 0.0, 1.0)
    plain = KSampler().run(ctx, "3", ref, 5, 4, 5.0, "euler", "normal", pos, neg, Latent(whole), 0.5)[0]
    steered = KSampler().run(ctx, "3", ref, 5, 4, 5.0, "euler", "normal", cpos, cneg, Latent(whole), 0.5)[0]
    assert steered.samples.shape == whole.shape and not torch.equal(steered.samples, plain.samples)


@pytest.mark.parametrize("model", ["tiny-test", "demo-test"])
def test_inpaint_nodes_redraw_only_the_mask(sessions, tmp_path, model):
    """VAEEncodeForInpaint + KSampler: latent cells outside the (grown) mask come back exactly as encoded,
    the masked ones are redrawn; SetLatentNoiseMask does the same on any latent."""
    from loraflow.serve.comfy.nodes import CLIPTextEncode, KSampler, SetLatentNoiseMask, VAEEncodeForInpaint
    from loraflow.serve.comfy.values import ModelRef

    ctx = _ctx(sessions, tmp_path)
    ref = ModelRef(model)
    cond = CLIPTextEncode().run(ctx, "6", text="a red circle", clip=ref)[0]
    pixels = torch.rand((1, 64, 64, 3), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros((1, 64, 64))
    mask[:, :, 48:] = 1.0  # redraw the right quarter
    latent = VAEEncodeForInpaint().run(ctx, "11", pixels=pixels, vae=ref, mask=mask, grow_mask_by=8)[0]
    # an 8 x 8 box with ComfyUI's padding ceil(7 / 2) = 4 reaches 3 pixels to the left of column 48
    assert latent.noise_mask[0, 0, 0, 44] == 0 and latent.noise_mask[0, 0, 0, 45] == 1
    out = KSampler().run(ctx, "3", ref, 1, 2, 5.0, "euler", "normal", cond, cond, latent, 1.0)[0].samples
    cells = out.shape[3] * 40 // 64  # latent columns wholly left of the grown mask
    assert torch.equal(out[..., :cells], latent.samples[..., :cells])
    assert not torch.allclose(out[..., -1:], latent.samples[..., -1:], atol=1e-2)

    masked = SetLatentNoiseMask().run(ctx, "12", samples=Latent(latent.samples), mask=mask)[0]
    out = KSampler().run(ctx, "3", ref, 1, 2, 5.0, "euler", "normal", cond, cond, masked, 1.0)[0].samples
    assert torch.equal(out[..., :out.shape[3] * 48 // 64], latent.samples[..., :out.shape[3] * 48 // 64])
