"""The diffusers pipeline for a task, built from the loaded pipeline's components (no reload).

    task_pipeline(pipe, family, "img2img", controlnets=[cn])  # e.g. StableDiffusionXLControlNetImg2ImgPipeline

Building one only registers the modules the loaded pipeline already holds (UNet with its LoRAs,
VAE, scheduler), so it is cheap and always sees the current LoRAs and sampler. Text encoders are
kept for the family's own classes and left out of borrowed ones (Kolors running SDXL's classes):
the session always hands the pipeline precomputed embeddings.
"""
from __future__ import annotations

from loraflow.errors import ConfigError

TASKS = ("text2img", "img2img", "inpaint")
TEXT_MODULES = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def task_class_name(family, task: str, with_control: bool) -> str:
    if with_control:
        name = family.controlnet_class_names.get(task)
        if name is None:
            raise ConfigError(f"{family.name} has no ControlNet {task} pipeline")
        return name
    return family.pipeline_class(task).__name__  # ConfigError when diffusers has none


def task_pipeline(pipe, family, task: str, controlnets: list | None = None):
    """`pipe` itself for plain text2img; otherwise the task's pipeline over the same modules."""
    import diffusers

    controlnets = controlnets or []
    name = task_class_name(family, task, bool(controlnets))
    if name == type(pipe).__name__:
        return pipe
    cls = getattr(diffusers, name)
    # image_encoder is an attached IP-Adapter's (models/ip_adapter.py) when there is one: task pipelines
    # are handed its embeddings ready-made, and holding the encoder would keep it alive after it is replaced
    components = {**pipe.components, "image_encoder": None}
    if name in family.borrowed_class_names:
        components.update(dict.fromkeys(TEXT_MODULES))
    if controlnets:
        components["controlnet"] = (controlnets[0] if len(controlnets) == 1
                                    else diffusers.MultiControlNetModel(controlnets))
    expected, optional = cls._get_signature_keys(cls)
    kwargs = {k: components.get(k) for k in expected}
    # config flags such as requires_safety_checker / force_zeros_for_empty_prompt carry over
    kwargs.update({k: pipe.config[k] for k in optional if k in pipe.config and k not in kwargs})
    task_pipe = cls(**kwargs)
    task_pipe.set_progress_bar_config(disable=True)
    return task_pipe


def accepts(pipe, name: str) -> bool:
    """Whether the pipeline's __call__ takes `name` (SD/SDXL img2img take no height/width)."""
    import inspect

    return name in inspect.signature(type(pipe).__call__).parameters
