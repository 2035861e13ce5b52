"""ControlNet for workflows, on loraflow's ControlNet support (`loraflow.generate.control`): the
ControlNet is loaded once per file and model, and the family's ControlNet pipeline is built over
the loaded pipeline's modules (`task_pipeline`). Hints are taken from the positive conditioning."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControlNetRef:
    path: str


def load_controlnet(ctx, path) -> ControlNetRef:
    return ControlNetRef(str(path))  # weights load lazily, when a sampler uses the unit


def control_pipeline(ctx, session, hints, height: int, width: int):
    """(pipeline, call kwargs) for text-to-image with the ControlNets of `hints`."""
    import numpy as np
    from PIL import Image

    from loraflow.generate.control.model import load_controlnet as load
    from loraflow.generate.control.pipelines import task_pipeline

    unet = session.pipe.unet
    cache = ctx.state.setdefault("controlnets", {})
    nets, images = [], []
    for hint in hints:
        key = (hint.controlnet.path, id(session.pipe))
        if key not in cache:
            cache[key] = load(hint.controlnet.path, unet, dtype=unet.dtype, device=unet.device)
        nets.append(cache[key])
        array = (hint.image[0].float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        images.append(Image.fromarray(array[..., :3]).convert("RGB").resize((width, height), Image.BICUBIC))
    pipe = task_pipeline(session.pipe, session.family, "text2img", nets)
    one = len(hints) == 1
    kwargs = {"image": images[0] if one else images,
              "controlnet_conditioning_scale": hints[0].strength if one else [h.strength for h in hints],
              "control_guidance_start": hints[0].start_percent if one else [h.start_percent for h in hints],
              "control_guidance_end": hints[0].end_percent if one else [h.end_percent for h in hints]}
    return pipe, kwargs
