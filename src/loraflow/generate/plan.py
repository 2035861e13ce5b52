"""`plan_generate(config)`: one image batch of `config` on the meta device, phase by phase.

    1. prompt and negative prompt through every text encoder
    2. one denoising step (classifier-free guidance doubles the UNet batch)
    3. VAE decode of the batch (tiled and sliced when `vae_tiling`)

Which weights are on the device in each phase depends on `offload` (generate/memory.py runs the
same modes): none — everything; encoders — the text encoders stay on the CPU; model — only the
running component (accelerate's model offload); sequential — only the running layer (accelerate's
sequential offload: its largest layer is counted).

`stop_if_over_free_memory(config, device)` is what `generate` and `storyboard` run before loading on
CUDA: a plan over the free device memory would spill into shared memory and crawl, so it stops with
one line instead (the training's check is train/fit.py).
"""
from __future__ import annotations

from loraflow.plan.report import Phase, Plan
from loraflow.generate.memory import enable_vae_tiling
from loraflow.models.loading import vae_dtype
from loraflow.plan import phases as ops
from loraflow.plan.accountant import MemoryAccountant
from loraflow.plan.architecture import resolve_architecture
from loraflow.plan.cuda_rules import cuda_rules
from loraflow.plan.modes import GENERATE_STEPS, cuda_free_bytes, stop_if_spilling


def memory_settings(config, family) -> dict:
    return {"dtype": _dtype_name(config.dtype), "height": config.height or family.defaults.height,
            "width": config.width or family.defaults.width, "batch_size": config.batch_size,
            "num_inference_steps": config.num_inference_steps or family.defaults.num_inference_steps,
            "offload": config.offload, "vae_tiling": config.vae_tiling}


def _dtype_name(dtype: str) -> str:
    return "float16" if dtype == "auto" else dtype  # auto: float16 on CUDA (loading.resolve_dtype)


def plan_generate(config) -> Plan:
    import torch

    arch = resolve_architecture(config.model, config.family)
    family = arch.family
    settings = memory_settings(config, family)
    dtype = getattr(torch, settings["dtype"])
    batch, height, width = settings["batch_size"], settings["height"], settings["width"]
    guidance = (config.guidance_scale or family.defaults.guidance_scale) > 1.0
    acct = MemoryAccountant("meta")
    result: list[Phase] = []
    flops: dict[str, int] = {}
    with acct, cuda_rules(None):
        with acct.category("weights"):
            unet = arch.build("unet", dtype)
            vae = arch.build("vae", getattr(torch, vae_dtype(arch.config("vae"), settings["dtype"])))
            encoders = {n: arch.build(n, dtype) for n in arch.text_encoder_names}
        if config.vae_tiling:
            enable_vae_tiling(vae)
        resident = _resident_bytes(config.offload, unet, vae, encoders)

        def measure(name, component, fn):
            acct.reset_peak()
            before, acct.flops = acct.flops, 0
            with acct.counting_flops():
                out = fn()
            flops[name], acct.flops = acct.flops, before
            # weights not on the device in this phase are taken off (they were built for the shapes)
            off = acct.resident("weights") - resident(component)
            by = dict(acct.peak_by_category)
            by["weights"] -= off
            result.append(Phase(name, acct.peak - off, by))
            return out

        for name, encoder in encoders.items():  # encoders offload: they run on the CPU, not planned here
            if config.offload != "encoders":
                measure("text encoding", name, lambda e=encoder: ops.encode_prompt(family, e, 2 * batch))
        embeds, pooled = ops.conditioning(family, unet, batch, dtype)
        scale = ops.vae_factor(vae)
        latents = torch.empty(batch, unet.config.in_channels, height // scale, width // scale, dtype=dtype,
                              device="meta")
        latents = measure("denoising step", "unet",
                          lambda: ops.denoise_step(family, unet, latents, embeds, pooled, guidance))
        del embeds, pooled
        measure("VAE decode", "vae", lambda: ops.vae_decode(vae, latents / vae.config.scaling_factor))
    steps = settings["num_inference_steps"]
    per_image = sum(v for k, v in flops.items() if k != "denoising step") + steps * flops["denoising step"]
    # flops holds the last encoder's text FLOPs only; they are a rounding error next to the UNet's
    notes = []
    if config.lora or config.control:
        notes.append("LoRA and ControlNet weights are not in this plan (LoRAs are fused into the weights when loaded)")
    if any(r.scale for r in config.reference):  # scale 0 everywhere: the adapter is not attached
        notes.append("the IP-Adapter and its image encoder are not in this plan (add their file sizes)")
    return Plan("generate", arch.source, settings, result, flops["denoising step"], notes=notes,
                flops_per_image=per_image)


def largest_scene(items: list, cfg):
    """The storyboard scene whose plan is the run's: the largest image, with the run's model options
    (model, dtype, offload, VAE tiling, ...) and scene batch size; every scene runs on one loaded model."""
    from loraflow.generate.options import ModelOptions

    largest = max(items, key=lambda c: (c.height or 0) * (c.width or 0) * c.batch_size)
    run = {k: getattr(cfg, k) for k in ModelOptions.model_fields}
    return largest.model_copy(update={**run, "model": cfg.model or largest.model, "batch_size": cfg.batch_size})


def stop_if_over_free_memory(config, device: str, free_bytes: int | None = None, planner=None) -> None:
    """Before the first image: a ConfigError naming the planned peak, the free memory and the flags that
    would fit when `config`'s plan exceeds the free memory of `device` (CUDA only; `free_bytes` and
    `planner` replace torch.cuda.mem_get_info and plan_generate in tests)."""
    free_bytes = cuda_free_bytes(device) if free_bytes is None else free_bytes
    if free_bytes is None:
        return
    planner = planner or plan_generate
    stop_if_spilling(config, planner(config), free_bytes, planner, GENERATE_STEPS)


def _resident_bytes(offload: str, unet, vae, encoders: dict):
    """component -> bytes of weights on the device while it runs."""
    def size(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    modules = {"unet": unet, "vae": vae, **encoders}
    sizes = {k: size(m) for k, m in modules.items()}
    everything = sum(sizes.values())
    if offload == "none":
        return lambda component: everything
    if offload == "encoders":
        return lambda component: sizes["unet"] + sizes["vae"] + (sizes[component] if component in encoders else 0)
    if offload == "model":
        return lambda component: sizes[component]
    return lambda component: ops.largest_layer_bytes(modules[component])  # sequential
