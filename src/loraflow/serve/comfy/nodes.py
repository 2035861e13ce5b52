"""The core ComfyUI node set as thin shells over loraflow's functions.

Each node declares its inputs (as ComfyUI's `INPUT_TYPES` shows them in /object_info), its output
types and a `run(ctx, **inputs)` that calls plain functions (the session's prompt encoding, the one
denoising engine `loraflow.generate.engine` that `generate` uses too, the VAE). Nothing in a workflow
can name code: `class_type` is looked up in `NODES`, values are data.
"""
from __future__ import annotations

from dataclasses import replace

from loraflow.models.loading import BUILTIN_MODELS
from loraflow.models.lora.load import check_family, read_lora
from loraflow.serve.comfy.node_base import COMBO, FLOAT, INT, LINK, MAX_RESOLUTION, STRING, Input, Node
from loraflow.serve.comfy.nodes_ipadapter import IPADAPTER_NODES
from loraflow.serve.comfy.nodes_regions import REGION_NODES
from loraflow.serve.comfy.sampling import (
    SAMPLER_NAMES, SCHEDULER_NAMES, SamplerInputs, inpaint_latent, sample, save_images, scale_images, vae_decode,
    vae_encode,
)
from loraflow.serve.comfy.values import (
    Conditioning, ControlHint, ControlNetRef, Latent, ModelRef, NodeError, Shown, activate, map_conditioning,
)

__all__ = ["Input", "NODES", "Node", "NodeError", "SAMPLER_NAMES", "SCHEDULER_NAMES", "object_info"]


# ---- loaders --------------------------------------------------------------------------------------
def _models(paths) -> list[str]:
    return paths.list("model") + list(BUILTIN_MODELS)


class CheckpointLoaderSimple(Node):
    """Loads a base model (diffusers folder or .safetensors under models_dir, or tiny:*)."""

    INPUTS = {"ckpt_name": COMBO(_models)}
    OUTPUTS = ("MODEL", "CLIP", "VAE")
    FILE_INPUTS = {"ckpt_name": "model"}

    def run(self, ctx, node_id, ckpt_name):
        ref = ModelRef(ctx.paths.model(ckpt_name))
        ref.session(ctx)  # load now, so the time is spent (and reported) on this node
        return ref, ref, ref


class LoraLoader(Node):
    """Adds a LoRA to MODEL (strength_model) and CLIP (strength_clip)."""

    INPUTS = {"model": LINK("MODEL"), "clip": LINK("CLIP"), "lora_name": COMBO(lambda p: p.list("LoRA")),
              "strength_model": FLOAT(1.0, -100.0, 100.0), "strength_clip": FLOAT(1.0, -100.0, 100.0)}
    OUTPUTS = ("MODEL", "CLIP")
    FILE_INPUTS = {"lora_name": "LoRA"}

    def run(self, ctx, node_id, model, clip, lora_name, strength_model, strength_clip):
        path = str(ctx.paths.lora(lora_name))
        check_family(read_lora(path), model.session(ctx).family.name)  # wrong family: an error on this node
        return model.with_lora(path, strength_model), clip.with_lora(path, strength_clip)


class ControlNetLoader(Node):
    """Loads a ControlNet from models_dir/controlnet."""

    INPUTS = {"control_net_name": COMBO(lambda p: p.list("ControlNet"))}
    OUTPUTS = ("CONTROL_NET",)
    FILE_INPUTS = {"control_net_name": "ControlNet"}

    def run(self, ctx, node_id, control_net_name):
        return (ControlNetRef(str(ctx.paths.controlnet(control_net_name))),)  # weights load when sampled


class LoadImage(Node):
    """An uploaded image (POST /upload/image) -> IMAGE and MASK (from the alpha channel)."""

    CATEGORY = "image"
    INPUTS = {"image": COMBO(lambda p: sorted(x.relative_to(p.inputs).as_posix() for x in p.inputs.rglob("*")
                                              if x.is_file()), image_upload=True)}
    OUTPUTS = ("IMAGE", "MASK")
    FILE_INPUTS = {"image": "input"}

    def run(self, ctx, node_id, image):
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        path = ctx.paths.output_file(image, kind="input")
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]
            if "A" in im.getbands():
                alpha = torch.from_numpy(np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0)
                mask = (1.0 - alpha)[None]
            else:
                mask = torch.zeros((1, 64, 64))
        return rgb, mask


# ---- conditioning ---------------------------------------------------------------------------------
class CLIPTextEncode(Node):
    """Encodes a prompt with the model family's text encoder(s); A1111 weights like (word:1.2) work."""

    CATEGORY = "conditioning"
    INPUTS = {"text": STRING(multiline=True, dynamicPrompts=True), "clip": LINK("CLIP")}
    OUTPUTS = ("CONDITIONING",)

    def run(self, ctx, node_id, text, clip):
        session = activate(ctx, clip)
        return (Conditioning(session.encode([text])[0], clip.model),)


class ControlNetApplyAdvanced(Node):
    """Attaches a ControlNet and its hint image to positive and negative conditioning."""

    CATEGORY = "conditioning/controlnet"
    INPUTS = {"positive": LINK("CONDITIONING"), "negative": LINK("CONDITIONING"), "control_net": LINK("CONTROL_NET"),
              "image": LINK("IMAGE"), "strength": FLOAT(1.0, 0.0, 10.0), "start_percent": FLOAT(0.0, 0.0, 1.0, 0.001),
              "end_percent": FLOAT(1.0, 0.0, 1.0, 0.001), "vae": LINK("VAE", optional=True)}
    OUTPUTS = ("CONDITIONING", "CONDITIONING")
    OUTPUT_NAMES = ("positive", "negative")

    def run(self, ctx, node_id, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None):
        if start_percent > end_percent:
            raise NodeError(f"start_percent {start_percent} is after end_percent {end_percent}")
        hint = ControlHint(control_net, image, strength, start_percent, end_percent)
        if strength <= 0:
            return positive, negative
        add = lambda c: replace(c, controls=c.controls + (hint,))  # noqa: E731  (every conditioning of a combination)
        return map_conditioning(positive, add), map_conditioning(negative, add)


# ---- latents and sampling -------------------------------------------------------------------------
class EmptyLatentImage(Node):
    """A batch of empty latents of the given size (the sampler adds the noise).

    Always (B, 4, height/8, width/8) zeros, as in ComfyUI: the node does not know the model; the
    samplers refit an empty latent to the model's channels and VAE scale factor (`fit_latent`)."""

    CATEGORY = "latent"
    INPUTS = {"width": INT(512, 16, MAX_RESOLUTION, 8), "height": INT(512, 16, MAX_RESOLUTION, 8),
              "batch_size": INT(1, 1, 4096)}
    OUTPUTS = ("LATENT",)

    def run(self, ctx, node_id, width, height, batch_size):
        import torch

        return (Latent(torch.zeros((batch_size, 4, height // 8, width // 8))),)


class KSampler(Node):
    """Denoises a latent with the model, the positive/negative conditioning, a sampler and a seed."""

    CATEGORY = "sampling"
    INPUTS = {"model": LINK("MODEL"), "seed": INT(0, 0, 2**64 - 1, control_after_generate=True),
              "steps": INT(20, 1, 10000), "cfg": FLOAT(8.0, 0.0, 100.0, 0.1, round=0.01),
              "sampler_name": COMBO(SAMPLER_NAMES), "scheduler": COMBO(SCHEDULER_NAMES),
              "positive": LINK("CONDITIONING"), "negative": LINK("CONDITIONING"), "latent_image": LINK("LATENT"),
              "denoise": FLOAT(1.0, 0.0, 1.0)}
    OUTPUTS = ("LATENT",)

    def run(self, ctx, node_id, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise):
        s = SamplerInputs(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image)
        # denoise < 1: the last int(steps * denoise) steps of the schedule, as diffusers' img2img strength
        start = steps - min(int(steps * denoise), steps)
        if start >= steps:
            return (latent_image,)  # nothing to denoise
        return (sample(ctx, node_id, "KSampler", s, start_step=start),)


class KSamplerAdvanced(Node):
    """KSampler over steps [start_at_step, end_at_step) of the schedule, adding noise or not, returning
    the latent with the noise left at end_at_step or denoised fully (ComfyUI's KSamplerAdvanced)."""

    CATEGORY = "sampling"
    INPUTS = {"model": LINK("MODEL"), "add_noise": COMBO(("enable", "disable")),
              "noise_seed": INT(0, 0, 2**64 - 1, control_after_generate=True), "steps": INT(20, 1, 10000),
              "cfg": FLOAT(8.0, 0.0, 100.0, 0.1, round=0.01), "sampler_name": COMBO(SAMPLER_NAMES),
              "scheduler": COMBO(SCHEDULER_NAMES), "positive": LINK("CONDITIONING"),
              "negative": LINK("CONDITIONING"), "latent_image": LINK("LATENT"), "start_at_step": INT(0, 0, 10000),
              "end_at_step": INT(10000, 0, 10000), "return_with_leftover_noise": COMBO(("disable", "enable"))}
    OUTPUTS = ("LATENT",)

    def run(self, ctx, node_id, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive,
            negative, latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        s = SamplerInputs(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image)
        end = None if end_at_step >= steps else end_at_step
        if start_at_step >= min(steps, end_at_step):
            return (latent_image,)  # an empty window: ComfyUI returns the latent as it is
        return (sample(ctx, node_id, "KSamplerAdvanced", s, start_step=start_at_step, end_step=end,
                       add_noise=add_noise == "enable", full_denoise=return_with_leftover_noise == "disable"),)


class VAEDecode(Node):
    """Latents -> images with the model's VAE."""

    CATEGORY = "latent"
    INPUTS = {"samples": LINK("LATENT"), "vae": LINK("VAE")}
    OUTPUTS = ("IMAGE",)

    def run(self, ctx, node_id, samples, vae):
        return (vae_decode(vae.session(ctx).pipe.vae, samples.samples),)


class VAEEncode(Node):
    """Images -> latents with the model's VAE (sides cropped to multiples of 8 and of its scale factor)."""

    CATEGORY = "latent"
    INPUTS = {"pixels": LINK("IMAGE"), "vae": LINK("VAE")}
    OUTPUTS = ("LATENT",)

    def run(self, ctx, node_id, pixels, vae):
        pipe = vae.session(ctx).pipe
        return (Latent(vae_encode(pipe.vae, pixels, pipe.vae_scale_factor)),)


class VAEEncodeForInpaint(Node):
    """Images -> latents for inpainting: what the mask covers is greyed out and will be redrawn."""

    CATEGORY = "latent/inpaint"
    INPUTS = {"pixels": LINK("IMAGE"), "vae": LINK("VAE"), "mask": LINK("MASK"), "grow_mask_by": INT(6, 0, 64)}
    OUTPUTS = ("LATENT",)

    def run(self, ctx, node_id, pixels, vae, mask, grow_mask_by):
        pipe = vae.session(ctx).pipe
        return (inpaint_latent(pipe.vae, pixels, mask, grow_mask_by, pipe.vae_scale_factor),)


class SetLatentNoiseMask(Node):
    """Limits sampling to the masked area of a latent (1 = redraw); the rest keeps the input."""

    CATEGORY = "latent/inpaint"
    INPUTS = {"samples": LINK("LATENT"), "mask": LINK("MASK")}
    OUTPUTS = ("LATENT",)

    def run(self, ctx, node_id, samples, mask):
        return (Latent(samples.samples, mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])),)


# ---- images ---------------------------------------------------------------------------------------
class ImageScale(Node):
    """Resizes images to width x height (0 keeps the aspect ratio); crop=center crops before scaling."""

    CATEGORY = "image/upscaling"
    INPUTS = {"image": LINK("IMAGE"), "upscale_method": COMBO(("nearest-exact", "bilinear", "area", "bicubic", "lanczos")),
              "width": INT(512, 0, MAX_RESOLUTION), "height": INT(512, 0, MAX_RESOLUTION),
              "crop": COMBO(("disabled", "center"))}
    OUTPUTS = ("IMAGE",)

    def run(self, ctx, node_id, image, upscale_method, width, height, crop):
        return (scale_images(image, upscale_method, width, height, crop),)


class SaveImage(Node):
    """Saves images as PNG under outputs_dir (the workflow is embedded, as ComfyUI does)."""

    CATEGORY = "image"
    INPUTS = {"images": LINK("IMAGE"), "filename_prefix": STRING("ComfyUI")}
    OUTPUT_NODE = True

    def run(self, ctx, node_id, images, filename_prefix, prompt=None, extra_pnginfo=None):
        return Shown((), {"images": save_images(ctx, images, filename_prefix, prompt, extra_pnginfo)})


NODES: dict[str, type[Node]] = {cls.__name__: cls for cls in (
    CheckpointLoaderSimple, LoraLoader, CLIPTextEncode, EmptyLatentImage, KSampler, KSamplerAdvanced,
    VAEDecode, VAEEncode, VAEEncodeForInpaint, SetLatentNoiseMask, SaveImage, LoadImage, ControlNetLoader,
    ControlNetApplyAdvanced, ImageScale, *IPADAPTER_NODES, *REGION_NODES,
)}


def object_info(paths, name: str | None = None) -> dict:
    names = [name] if name else list(NODES)
    return {n: NODES[n].info(n, paths) for n in names if n in NODES}


