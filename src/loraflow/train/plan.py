"""`plan_train(config)`: one LoRA training run of `config` on the meta device, phase by phase.

    1. build the VAE and text encoders at full size in the run's dtypes (weights)
    2. cache pass: VAE encode of one batch, one caption through every text encoder on the device, with
       the text encoders whole on the device and streamed one layer at a time (`stream_text_encoders`,
       accelerate's cpu_offload: their weights off the device, the largest layer's on it while they run);
       unset, the run streams when the whole encoders would make the cache pass the run's peak
    3. encoders the loop does not need are released, as `precache.release_encoders` does (validation
       prompts were encoded in the cache pass: validation keeps the VAE, not the text encoders)
    4. the UNet arrives (model_setup keeps it on the CPU until accelerator.prepare), then
       `prepare_unet` — the training's own fp8 storage / LoRA / checkpointing setup
    5. optimizer state exists (a first step has been taken), then one optimizer step is measured:
       [prompts and images encoded when not cached] -> noise -> UNet -> loss -> backward -> clip -> step
    6. validation images: one guided denoising step and a tiled VAE decode at the training resolution

Inputs of step 5 are those of `trainer.micro_batch_loss` for the largest-area bucket (the square
one): the same `objective` functions make the noisy input and the loss.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace

from loraflow.plan.gpus import GiB
from loraflow.plan.report import Phase, Plan
from loraflow.train.config import TrainConfig
import loraflow.train.objective as objective
from loraflow.plan import phases
from loraflow.plan.accountant import MemoryAccountant
from loraflow.plan.architecture import resolve_architecture
from loraflow.plan.cuda_rules import cuda_rules
from loraflow.train.model_setup import TrainModel, WEIGHT_DTYPES, prepare_unet, vae_dtype
from loraflow.train.optim import make_optimizer
from loraflow.generate.memory import vae_tiled
from loraflow.train.precache import caches_on, in_loop


@dataclass(frozen=True)
class Workload:
    """How a trainer feeds the UNet; `from_config` is loraflow's, bench/memory.py builds others."""
    vae_in_loop: bool  # images are encoded every step (no latent cache)
    text_in_loop: bool  # captions are encoded every step (no text cache)
    encoders_resident: bool  # text encoders (and the VAE) stay on the device during the loop
    text_dtype: str | None = None  # text encoders' dtype when not the weights' (DiffSynth: float16)
    vae_dtype: str | None = None  # the VAE's when not loraflow's choice (diffusers' SDXL script: float32)
    vae_resident: bool | None = None  # the VAE stays (uncached latents, validation images); None: as encoders_resident

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Workload":
        latents_on, texts_on = caches_on(config)
        vae_runs, texts_run = in_loop(config, latents_on, texts_on)  # what precache.release_encoders keeps
        return cls(not latents_on, not texts_on, texts_run, vae_resident=vae_runs)


def memory_settings(config: TrainConfig) -> dict:
    keys = ("mixed_precision", "resolution", "batch_size", "lora_rank", "lora_targets", "train_text_encoder",
            "gradient_checkpointing", "offload_activations", "recompute", "base_fp8", "optimizer",
            "text_encoders_on_cpu", "stream_text_encoders")
    return {k: getattr(config, k) for k in keys}


def plan_train(config: TrainConfig, workload: Workload | None = None) -> Plan:
    import torch

    workload = workload or Workload.from_config(config)
    arch = resolve_architecture(config.model, config.family)
    family = arch.family
    resolution = config.resolution or family.defaults.height
    weight_dtype = getattr(torch, WEIGHT_DTYPES[config.mixed_precision])
    autocast = None if config.mixed_precision == "no" else weight_dtype  # accelerator.autocast()
    acct = MemoryAccountant("meta")
    phases: list[Phase] = []
    notes: list[str] = []

    def measure(name, fn, keep=True):
        acct.reset_peak()
        fn()
        phase = Phase(name, acct.peak, dict(acct.peak_by_category))
        if keep:
            phases.append(phase)
        return phase

    with acct, cuda_rules(autocast):
        # 1. frozen components; the UNet comes to the device after the cache pass (model_setup)
        with acct.category("weights"):
            pipe = SimpleNamespace(unet=None)
            vae_config = _vae_config(arch, config.vae, notes)
            vae_dtype_name = workload.vae_dtype or vae_dtype(vae_config, WEIGHT_DTYPES[config.mixed_precision])
            pipe.vae = arch.build("vae", getattr(torch, vae_dtype_name))
            text_dtype = getattr(torch, workload.text_dtype) if workload.text_dtype else weight_dtype
            on_device = [] if config.text_encoders_on_cpu else list(arch.text_encoder_names)
            for name in on_device:
                setattr(pipe, name, arch.build(name, text_dtype))
        scheduler = family.noise_scheduler()
        model = TrainModel(pipe, family, arch.source, arch.source, None, weight_dtype, scheduler,
                           config.prediction_type or scheduler.config.prediction_type)

        def setup_unet():  # 4. the UNet and the training's own setup
            with acct.category("weights"):
                pipe.unet = arch.build("unet", weight_dtype)
            with acct.category("lora"):
                prepare_unet(model, config)
            # the frozen base is weights even where setup made new storages for it (fp8 storage)
            acct.tag([p for p in pipe.unet.parameters() if not p.requires_grad], "weights")
            params = model.trainable_parameters()
            acct.tag(params, "lora")
            for p in params:
                p.register_post_accumulate_grad_hook(lambda p: acct.tag([p.grad], "gradients"))
            return params

        batch, scale = config.batch_size, 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        # 2. cache pass, the text encoders whole (False) and/or streamed (True)
        stream = config.stream_text_encoders if on_device and not workload.text_in_loop else False
        cache_pass = {}
        if not (workload.vae_in_loop and workload.text_in_loop):
            for streamed in ((False, True) if stream is None else (bool(stream),)):
                # streamed: the encoders' weights are in host memory for the whole pass (see _encode)
                text_weights = [p for n in on_device for p in getattr(pipe, n).parameters()] if streamed else []
                with acct.offloaded(text_weights):
                    # captions one at a time, as precache() runs them (TextCache.one -> family.encode_prompts)
                    cache_pass[streamed] = measure("cache pass", lambda s=streamed: _encode(
                        family, pipe, on_device, batch, resolution, not workload.vae_in_loop,
                        not workload.text_in_loop, acct if s else None, captions=1), keep=False)
                del text_weights  # references would keep the encoders' storages alive after their release
        # 3. release what the loop does not use
        if not workload.encoders_resident:
            for name in on_device:
                setattr(pipe, name, None)
        if not (workload.encoders_resident if workload.vae_resident is None else workload.vae_resident):
            pipe.vae = None
        params = setup_unet()
        # 5. optimizer state, then one measured step
        optimizer = _optimizer(params, config, acct)
        shape = (batch, pipe.unet.config.in_channels, resolution // scale, resolution // scale)

        def step():
            _encode(family, pipe, on_device, batch, resolution, workload.vae_in_loop, workload.text_in_loop)
            train_step(model, config, optimizer, params, shape)

        with acct.saved_for_backward(), acct.counting_flops():
            measure("training step", step)
        # 6. validation images (no text encoding when the encoders are gone: their prompts were encoded
        # in the cache pass)
        if config.validation_prompt and pipe.vae is not None:
            measure("validation", lambda: _validation(family, pipe, on_device, resolution, scale))
    if cache_pass:  # unset: streamed when the whole encoders would make the cache pass the run's peak
        if stream is None:
            stream = cache_pass[False].peak_bytes > max((p.peak_bytes for p in phases), default=0)
        phases.insert(0, cache_pass[bool(stream)])
    if model.offload_traffic is not None:
        notes.append(offload_note(model.offload_traffic))
    if config.optimizer != "adamw":
        notes.append(f"{config.optimizer}: optimizer state planned from its layout; the optimizer itself was not run")
    settings = {**memory_settings(config), "resolution": resolution, "stream_text_encoders": bool(stream)}
    return Plan("train", arch.source, settings, phases, acct.flops, notes=notes)


HOST_LINK_BYTES_PER_S = 25e9  # PCIe 4.0 x16, pinned host memory, one direction


def offload_note(traffic) -> str:
    """What offload_activations moves per step and its time on the link, which the plan's step time
    (FLOPs only) does not include: the copies run in stream order, between the kernels."""
    seconds = (traffic.to_host_bytes + traffic.to_device_bytes) / HOST_LINK_BYTES_PER_S
    return (f"offload_activations: {traffic.to_host_bytes / GiB:.2f} GiB to the host and "
            f"{traffic.to_device_bytes / GiB:.2f} GiB back per step ({traffic.copies} copies): ~{seconds * 1e3:.0f} ms "
            f"a step at {HOST_LINK_BYTES_PER_S / 1e9:.0f} GB/s, not overlapped with compute (not in the step time)")


def _vae_config(arch, override: str | None, notes: list[str]) -> dict:
    """The VAE's config, with a replacement VAE's (e.g. sdxl-vae-fp16-fix: no fp32 upcast) when its
    config.json is on this machine; the layout is the family's either way."""
    import json
    from pathlib import Path

    config = arch.config("vae")
    if override:
        path = Path(override).expanduser()
        file = path / "config.json" if path.is_dir() else path.parent / "config.json"
        if file.is_file():
            return {**config, **json.loads(file.read_text(encoding="utf-8"))}
        notes.append(f"vae {override} is not on this machine: planned with the family's VAE config")
    return config


def _encode(family, pipe, encoders, batch, resolution, images: bool, text: bool, streamed_in=None,
            captions: int | None = None) -> None:
    """VAE encode of `batch` images and prompt encoding of `captions` (default `batch`) captions at once.
    `streamed_in` (the accountant): the text encoders are streamed
    (`precache.stream_text_encoders`; the caller has taken their weights off the device), and while one
    runs its largest layer's weights are on the device (an upper bound: accelerate holds one layer's while
    that layer runs, and ChatGLM's largest, the 0.5 GiB token embedding, runs first, when the activations
    are smallest)."""
    if images and pipe.vae is not None:
        phases.vae_encode(pipe.vae, batch, resolution, resolution)
    present = [getattr(pipe, n) for n in encoders if getattr(pipe, n, None) is not None] if text else []
    for encoder in present:
        with _one_layer(streamed_in, encoder) if streamed_in is not None else nullcontext():
            phases.encode_prompt(family, encoder, batch if captions is None else captions)


@contextmanager
def _one_layer(acct, encoder):
    import torch

    with acct.category("weights"):
        layer = torch.empty(phases.largest_layer_bytes(encoder), dtype=torch.uint8, device="meta")
    yield
    del layer


def train_step(model, config: TrainConfig, optimizer, params, shape, device="meta") -> None:
    """trainer.micro_batch_loss + optimizer_step on inputs of `shape` (B, C, h, w) (bench/plan_vs_cuda.py
    runs it on CUDA tensors)."""
    import torch

    unet, family = model.unet, model.family
    x0 = torch.randn(shape, dtype=torch.float32, device=device)  # LatentStore.sample: fp32 latents
    noise = torch.randn_like(x0)
    timesteps = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (shape[0],), device=device)
    noisy, target = objective.noisy_input_and_target(model.noise_scheduler, x0, noise, timesteps,
                                                     model.prediction_type)
    embeds, pooled = phases.conditioning(family, unet, shape[0], torch.float32, device)
    pred = unet(noisy, timesteps, encoder_hidden_states=embeds, **phases.unet_kwargs(family, pooled, shape[0])).sample
    loss = objective.diffusion_loss(pred, target, timesteps, model.noise_scheduler, model.prediction_type,
                                    config.min_snr_gamma)
    del pred, noisy, target, x0, noise
    (loss / config.gradient_accumulation).backward()
    if config.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _optimizer(params, config: TrainConfig, acct):
    """The run's optimizer with its state allocated (as after the first step). 8-bit AdamW and Prodigy
    are not installed here: their state is allocated in their layout and their step is a no-op."""
    import torch

    with acct.category("optimizer"):
        if config.optimizer == "adamw":
            # the per-tensor loop: fused AdamW (CUDA) has no meta kernel; both keep temporaries of one
            # parameter's size at most, against the whole-list temporaries of the foreach version
            optimizer = make_optimizer(params, config, "meta")
            for p in params:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return optimizer
        return _PlannedOptimizer(params, config.optimizer)


class _PlannedOptimizer:
    """State of bitsandbytes AdamW8bit (two uint8 moments + one fp32 absmax per 256-value block each,
    bitsandbytes `optim/optimizer.py` blockwise) or Prodigy (exp_avg, exp_avg_sq, s, p0 in the
    parameters' dtype, prodigyopt `prodigy.py`)."""

    def __init__(self, params, kind: str):
        import torch

        self.params, self.state = params, []
        for p in params:
            if kind == "adamw8bit":
                blocks = -(-p.numel() // 256)
                self.state += [torch.empty(p.shape, dtype=torch.uint8, device=p.device) for _ in range(2)]
                self.state += [torch.empty(blocks, dtype=torch.float32, device=p.device) for _ in range(2)]
            else:
                self.state += [torch.empty_like(p) for _ in range(4)]

    def step(self) -> None:  # updates in place: no memory beyond the state
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def _validation(family, pipe, encoders, resolution, scale) -> None:
    import torch

    for name in encoders:
        if getattr(pipe, name, None) is not None:
            phases.encode_prompt(family, getattr(pipe, name), 2)  # prompt and negative prompt
    dtype = next(pipe.unet.parameters()).dtype
    embeds, pooled = phases.conditioning(family, pipe.unet, 1, dtype)
    latents = torch.empty(1, pipe.unet.config.in_channels, resolution // scale, resolution // scale, dtype=dtype,
                          device="meta")
    latents = phases.denoise_step(family, pipe.unet, latents, embeds, pooled, guidance=True)
    with vae_tiled(pipe.vae):  # as feedback.validation_images decodes
        phases.vae_decode(pipe.vae, latents)
