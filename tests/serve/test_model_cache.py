"""The model cache owns what is built from a model: evicting the model frees its UNet and every
pipeline and ControlNet derived from it (nothing is kept in a side table keyed by id())."""
from __future__ import annotations

import gc
import weakref

from PIL import Image

from loraflow.generate.control.tiny import save_tiny_controlnet
from loraflow.generate.options import GenerateConfig
from loraflow.serve.model_cache import ModelCache


def test_eviction_frees_the_model_and_everything_derived_from_it(tmp_path):
    cache = ModelCache(size=1, device="cpu")
    session = cache.session("tiny:sdxl")
    controlnet_dir = str(save_tiny_controlnet("sdxl", tmp_path / "cn"))
    control = tmp_path / "hint.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(control)
    # draw once with a ControlNet, so its pipeline and the loaded ControlNet get built and cached
    session.generate(GenerateConfig(model="tiny:sdxl", prompt="a cat", num_inference_steps=1, height=64, width=64,
                                    seed=1, control=[f"tile:{control}"], controlnet=[controlnet_dir]))
    img2img = session.derived.pipeline("img2img")
    refs = {"unet": weakref.ref(session.pipe.unet), "img2img pipeline": weakref.ref(img2img),
            "ControlNet": weakref.ref(session.derived.controlnet(controlnet_dir)),
            "ControlNet pipeline": weakref.ref(session.derived.pipeline("text2img", (controlnet_dir,)))}
    assert img2img.unet is session.pipe.unet  # derived pipelines share the modules, they do not copy them
    del session, img2img

    cache.session("tiny:sd15")  # size 1: the SDXL model is evicted
    gc.collect()
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert alive == [] and cache.loaded() == ["tiny:sd15"]
