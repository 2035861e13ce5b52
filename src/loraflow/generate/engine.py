"""The one denoising engine: the family's diffusers pipeline for a task, run over a window of its
schedule, with per-step progress and latents.

    denoise(session, Denoising(...))          # what every image goes through
    sample_latents(session, LatentSampling(...))  # latents in, latents out (ComfyUI's samplers)

`GenerationSession.generate` (prompts and reference images) and the ComfyUI sampler nodes (latents,
ComfyUI's start/end steps and add_noise) differ only in the inputs they hand `denoise`; the
pipelines, ControlNets, scheduler and loop are the same objects.

A window `[start_step, end_step)` of a `steps`-step schedule follows ComfyUI's KSamplerAdvanced
(`comfy/samplers.py`, sigmas[start:end + 1]): the scheduler's timesteps are cut to the window and it
begins at `start_step` (diffusers' img2img does the same with `set_begin_index`), so sigmas are those
of the full schedule. Stopping at `end_step` leaves the latents with the noise of that step.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from loraflow.errors import ConfigError
from loraflow.models.families import PromptEmbeds

StepFn = Callable[[int, int, Any], None]  # (steps done, steps in the run, latents (B, C, h, w))
BlendFn = Callable[[int, Any], Any]  # (steps done, latents) -> the latents the next step starts from


@dataclass
class Denoising:
    """One run of the denoising loop."""

    inputs: dict  # pipeline arguments: embeddings (family.call_kwargs), latents or images, control maps
    steps: int  # length of the full schedule
    guidance_scale: float
    generator: Any  # a torch.Generator, or one per image (a batch equals its items run one by one)
    task: str = "text2img"  # text2img | img2img | inpaint
    controlnets: tuple[str, ...] = ()  # ControlNet files, in the order of the control inputs
    start_step: int = 0  # schedule steps skipped: the input latents are already noised to this step
    end_step: int | None = None  # stop before this step (None: run to the end of the schedule)
    full_denoise: bool = True  # with end_step: the last step goes to noise 0, else latents keep end_step's noise
    output_type: str = "pil"  # "pil" images or "latent" (B, C, h, w), scaled as the VAE's latents
    on_step: StepFn | None = None
    blend: BlendFn | None = None  # e.g. put back the kept part of an inpainted latent after each step
    regions: Any = None  # a regional_attention.RegionalConditioning when `inputs` hold regional prompts


def denoise(session, run: Denoising):
    """Images (or latents) of `run` with the session's pipeline for the task, LoRAs and sampler."""
    import torch

    from loraflow.generate.regional_attention import regional_attention  # imports torch

    pipe = session.derived.pipeline(run.task, run.controlnets)
    base_scheduler = pipe.scheduler
    pipe.scheduler = windowed(session.pipe.scheduler, run.start_step, run.end_step, run.full_denoise)

    def on_step_end(p, i, t, callback_kwargs):
        if run.blend:  # diffusers continues from the latents the callback returns
            callback_kwargs["latents"] = run.blend(i + 1, callback_kwargs["latents"])
        if run.on_step:
            run.on_step(i + 1, p.num_timesteps, callback_kwargs["latents"])
        return callback_kwargs

    try:
        with torch.no_grad(), regional_attention(pipe.unet, run.regions):
            return pipe(**run.inputs, num_inference_steps=run.steps, guidance_scale=run.guidance_scale,
                        generator=run.generator, callback_on_step_end=on_step_end,
                        output_type=run.output_type).images
    finally:
        pipe.scheduler = base_scheduler  # the window belongs to this run only


def windowed(scheduler, start: int, end: int | None, full_denoise: bool = True):
    """A copy of `scheduler` whose `set_timesteps(steps)` keeps only steps [start, end) of the schedule.

    Multi-stage samplers (Heun: order 2) have `order` timesteps per step, as diffusers' img2img slices
    them (`timesteps[t_start * order:]`). `full_denoise` with an `end` sets the noise level the last
    step steps to to 0, so it returns the model's clean estimate (ComfyUI's force_full_denoise:
    `sigmas[-1] = 0`); schedulers without a sigma table (DDIM) cannot do that."""
    if start == 0 and end is None:
        return scheduler
    if end is not None and full_denoise and not hasattr(scheduler, "sigmas"):
        raise ConfigError(f"{type(scheduler).__name__} cannot stop early with the noise removed; "
                          "use another sampler or keep the leftover noise")
    cut = copy.copy(scheduler)  # shallow: set_timesteps rebuilds its arrays on the copy
    order = scheduler.order

    def set_timesteps(*args, **kwargs):
        type(scheduler).set_timesteps(cut, *args, **kwargs)
        cut.timesteps = cut.timesteps[start * order: None if end is None else end * order]
        if hasattr(cut, "set_begin_index"):  # index sigmas from the window's first step (DDIM has none)
            cut.set_begin_index(0)
        if end is not None and full_denoise and end * order < len(cut.sigmas) - 1:
            # the window's last step (index (end - 1) * order, its last stage) steps to sigmas[that + 1]
            sigmas = cut.sigmas.clone()
            sigmas[(end - 1) * order + 1] = 0.0
            cut.sigmas = sigmas

    cut.set_timesteps = set_timesteps
    if hasattr(scheduler, "set_begin_index"):
        # pipelines count from their first timestep (SDXL's calls set_begin_index(0)): offset by the window
        cut.set_begin_index = lambda begin_index=0: type(scheduler).set_begin_index(cut, start * order + begin_index)
    return cut


# ---- latents in, latents out -------------------------------------------------------------------
@dataclass
class ControlInput:
    """A ControlNet applied while sampling: its file, hint image and when it acts (fractions of the run)."""

    controlnet: str
    image: Any  # PIL RGB at the output size
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass
class LatentSampling:
    """A sampler node's request (ComfyUI KSampler / KSamplerAdvanced)."""

    latents: Any  # (B, C, h, w): the model's latent channels; zeros for text-to-image
    positive: PromptEmbeds  # one prompt's embeddings (1, L, D), used for the whole batch
    negative: PromptEmbeds
    seed: int
    steps: int
    guidance_scale: float
    sampler: str | None = None  # a generate/schedulers name; None: the model's own
    start_step: int = 0
    end_step: int | None = None
    full_denoise: bool = True  # with end_step: False keeps the noise of end_step (return_with_leftover_noise)
    add_noise: bool = True  # False: the latents already carry the noise of `start_step`
    mask: Any = None  # (B or 1, 1, h, w) in [0, 1]: 1 = redraw, 0 = keep `latents` (inpainting); None: all
    controls: tuple[ControlInput, ...] = field(default_factory=tuple)
    references: Any = None  # generate.ip_references.PreparedReferences: IP-Adapter reference images; None: none
    on_step: StepFn | None = None
    # regional prompts: `positive` / `negative` from regional_attention.regional_embeds, and its RegionalConditioning
    regions: Any = None


def sample_latents(session, req: LatentSampling):
    """Denoised latents (B, C, h, w) on the CPU in float32, from `req.latents` of the same shape."""
    import torch

    session.set_scheduler(req.sampler)
    pipe = session.pipe
    samples = req.latents.float()
    batch, _, h, w = samples.shape
    scale = pipe.vae_scale_factor  # pixels per latent cell: 8 for SD/SDXL VAEs
    # 1. conditioning: one length for positive and negative (CLIP chunks), repeated over the batch
    dtype, device = pipe.unet.dtype, pipe.unet.device
    pos, neg = session.same_length([req.positive, req.negative])
    inputs = session.family.call_kwargs(_repeat(pos, batch, dtype), _repeat(neg, batch, dtype))
    inputs.update(height=h * scale, width=w * scale)
    inputs.update(_control_kwargs(req.controls))
    # the IP-Adapter is attached for this request's references, detached when it has none
    pipe_for_task = session.derived.pipeline("text2img", tuple(c.controlnet for c in req.controls))
    inputs.update(session.ip_adapter_inputs(req.references, pipe_for_task, req.guidance_scale, h * scale, w * scale))
    # 2. the noisy start, from the seed's CPU noise (as ComfyUI makes it: one tensor for the batch)
    generator = torch.Generator("cpu").manual_seed(req.seed % 2**63)
    noise = torch.randn(samples.shape, generator=generator)
    inputs["latents"] = noisy_start(pipe.scheduler, samples, noise, req).to(device, dtype)
    blend = None if req.mask is None else _inpaint_blend(pipe.scheduler, samples, noise, req)
    # 3. the window of the schedule
    latents = denoise(session, Denoising(
        inputs, req.steps, req.guidance_scale, generator, controlnets=tuple(c.controlnet for c in req.controls),
        start_step=req.start_step, end_step=req.end_step, full_denoise=req.full_denoise, output_type="latent",
        on_step=req.on_step, blend=blend, regions=req.regions))
    return latents.detach().float().cpu()


def _inpaint_blend(scheduler, samples, noise, req: LatentSampling) -> BlendFn:
    """After each step, the cells the mask keeps are reset to the input noised to the level the next
    step starts from (the input itself after the last step): diffusers' inpaint pipeline does this for
    4-channel UNets, ComfyUI's KSamplerX0Inpaint likewise."""
    ref = copy.copy(scheduler)  # never stepped: add_noise finds each timestep's noise level in the table
    ref.set_timesteps(req.steps)
    timesteps, order = ref.timesteps, ref.order
    last = req.steps if req.end_step is None else req.end_step
    keep_noise = req.end_step is not None and not req.full_denoise

    def blend(done: int, latents):
        if done % order:  # between the stages of one step (Heun): not a point on the schedule
            return latents
        step = req.start_step + done // order  # the next step to run
        mask = req.mask.to(latents.device, latents.dtype)
        if step < last or keep_noise:
            t = timesteps[min(step * order, len(timesteps) - 1)]
            kept = ref.add_noise(samples, noise, t.repeat(samples.shape[0]))
        else:
            kept = samples
        return latents * mask + kept.to(latents.device, latents.dtype) * (1 - mask)

    return blend


def noisy_start(scheduler, samples, noise, req: LatentSampling):
    """What to hand the text-to-image pipeline as `latents=` so its first step sees the right input.

    The pipeline multiplies `latents` by `init_noise_sigma` (the start noise level of its schedule),
    so the wanted start is divided by it. From step 0 the start is latent + noise * init_noise_sigma
    (ComfyUI adds noise * sigma_max to the latent; with an empty latent this is diffusers' own start);
    from a later step it is the latent noised to that step (`scheduler.add_noise`, as img2img)."""
    scheduler.set_timesteps(req.steps)
    init_sigma = scheduler.init_noise_sigma
    if not req.add_noise:
        start = samples
    elif req.start_step == 0:
        start = samples + noise * init_sigma
    else:
        t = scheduler.timesteps[req.start_step * scheduler.order]
        start = scheduler.add_noise(samples, noise, t.repeat(samples.shape[0]))
    return start / init_sigma


def _control_kwargs(controls: tuple[ControlInput, ...]) -> dict:
    """ControlNet text-to-image arguments: one value per ControlNet, bare when there is one."""
    if not controls:
        return {}
    one = len(controls) == 1
    pick = lambda values: values[0] if one else list(values)  # noqa: E731
    return {"image": pick([c.image for c in controls]),
            "controlnet_conditioning_scale": pick([c.scale for c in controls]),
            "control_guidance_start": pick([c.start for c in controls]),
            "control_guidance_end": pick([c.end for c in controls])}


def _repeat(embeds: PromptEmbeds, batch: int, dtype) -> PromptEmbeds:
    return PromptEmbeds(embeds.embeds.repeat(batch, 1, 1).to(dtype),
                        None if embeds.pooled is None else embeds.pooled.repeat(batch, 1).to(dtype))
