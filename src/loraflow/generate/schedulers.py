"""Samplers by the names people know from AUTOMATIC1111 / ComfyUI, mapped onto diffusers schedulers.

Each entry: diffusers class name, extra config, and how A1111 writes it in infotext
(`Sampler: DPM++ 2M, Schedule type: Karras`). The table follows diffusers' scheduler docs
("A1111 / k-diffusion name -> diffusers scheduler").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from loraflow.errors import ConfigError


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str
    config: dict = field(default_factory=dict)
    infotext_sampler: str = ""
    infotext_schedule: str | None = None


SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("EulerDiscreteScheduler", {}, "Euler"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "Heun": SamplerSpec("HeunDiscreteScheduler", {}, "Heun"),
    "LMS": SamplerSpec("LMSDiscreteScheduler", {}, "LMS"),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "DPM++ 2M Karras": SamplerSpec("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
    "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    "DPM++ 2M SDE Karras": SamplerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        "DPM++ 2M SDE", "Karras",
    ),
    "DDIM": SamplerSpec("DDIMScheduler", {}, "DDIM"),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", {}, "UniPC"),
}
# Lower-case / ComfyUI spellings accepted at the edge.
_ALIASES = {
    "euler": "Euler", "euler_a": "Euler a", "euler_ancestral": "Euler a", "heun": "Heun", "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras", "ddim": "DDIM", "unipc": "UniPC", "uni_pc": "UniPC",
}


def canonical_sampler(name: str) -> str:
    if name in SAMPLERS:
        return name
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace("++", "pp")
    for spelled, canon in list(_ALIASES.items()) + [(k.lower().replace(" ", "_").replace("++", "pp"), k) for k in SAMPLERS]:
        if key == spelled:
            return canon
    raise ConfigError(f"unknown scheduler '{name}'; choose one of: {', '.join(SAMPLERS)}")


def make_scheduler(name: str, base_config):
    """A scheduler of sampler `name` over the model's own noise schedule (`base_config`)."""
    import diffusers

    spec = SAMPLERS[canonical_sampler(name)]
    cls = getattr(diffusers, spec.scheduler_class)
    return cls.from_config(base_config, **spec.config)


def infotext_fields(name: str | None, scheduler) -> dict[str, str]:
    """`Sampler` / `Schedule type` for infotext; the model's own scheduler is described by class."""
    if name:
        spec = SAMPLERS[canonical_sampler(name)]
        fields = {"Sampler": spec.infotext_sampler}
        if spec.infotext_schedule:
            fields["Schedule type"] = spec.infotext_schedule
        return fields
    for canon, spec in SAMPLERS.items():
        if type(scheduler).__name__ == spec.scheduler_class and not spec.config:
            return {"Sampler": canon}
    return {"Sampler": type(scheduler).__name__}
