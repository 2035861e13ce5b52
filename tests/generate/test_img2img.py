"""img2img on tiny models: strength 0 gives the init image through the VAE, a small strength stays
near it, a full one does not; a batch equals its items; the infotext has `Denoising strength`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loraflow.generate.options import GenerateConfig

FAMILIES = ("sd15", "sdxl", "kolors")


@pytest.fixture(scope="module")
def init_image(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("init") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((64, 64), Image.LANCZOS).save(path)
    return str(path)


def config(family, **kw):
    base = dict(model=f"tiny:{family}", prompt="an astronaut", steps=50, height=64, width=64, seed=3,
                guidance_scale=4.0)
    base.update(kw)
    return GenerateConfig(**base)


def pixels(result):
    return np.asarray(result.image, dtype=np.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_the_init_image_through_the_vae(tiny_session, init_image, family):
    from loraflow.generate.control.references import vae_round_trip

    s = tiny_session(family)
    # the tiny VAE is random, so "the init image" is its VAE round trip (what any strength-0 run can give)
    round_trip = np.asarray(vae_round_trip(s.pipe, Image.open(init_image).convert("RGB"), 64, 64), dtype=np.float64)
    zero = s.generate(config(family, init_image=init_image, strength=0.0))[0]
    # diffusers refuses a run of 0 steps; strength 0 (here < 1/50) skips denoising altogether
    assert np.array_equal(pixels(zero), round_trip)
    assert zero.params["Denoising strength"] == 0.0


def test_small_strength_stays_near_the_init_image(init_image):
    """With a VAE calibrated like a trained one (sharp posterior, unit-variance latents), one step at
    t ~ 20/1000 (strength 0.02 of 50 steps) stays within a few levels of the init image's round trip."""
    import torch

    from loraflow.generate.control.references import vae_round_trip
    from loraflow.generate.session import GenerationSession
    from loraflow.models.loading import load_pipeline

    s = GenerationSession(load_pipeline("tiny:sd15", device="cpu"))
    vae, image = s.pipe.vae, Image.open(init_image).convert("RGB")
    with torch.no_grad():
        vae.quant_conv.weight[4:] = 0  # log-variance channels -> -30: the posterior is its mean
        vae.quant_conv.bias[4:] = -30
        latents = vae.encode(s.pipe.image_processor.preprocess(image, height=64, width=64)).latent_dist.mode()
    vae.register_to_config(scaling_factor=1.0 / latents.std().item())
    round_trip = np.asarray(vae_round_trip(s.pipe, image, 64, 64), dtype=np.float64)
    small = np.abs(pixels(s.generate(config("sd15", init_image=init_image, strength=0.02))[0]) - round_trip).mean()
    full = np.abs(pixels(s.generate(config("sd15", init_image=init_image, strength=1.0, steps=4))[0]) - round_trip).mean()
    assert small < 8 and full > 4 * small, (small, full)  # measured: ~3 vs ~35 levels of 255


def test_img2img_batch_equals_one_by_one_and_infotext(tiny_session, init_image):
    from loraflow.generate.infotext import parse_infotext

    s = tiny_session("sdxl")
    batch = s.generate(config("sdxl", init_image=init_image, strength=0.5, steps=4, num_images=2, batch_size=2))
    single = [s.generate(config("sdxl", init_image=init_image, strength=0.5, steps=4, seed=3 + i))[0] for i in range(2)]
    for a, b in zip(batch, single):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).max() > 0
    assert parse_infotext(batch[0].infotext)["Denoising strength"] == "0.5"


def test_img2img_with_controlnet(tiny_session, init_image, tmp_path):
    from loraflow.generate.control.tiny import save_tiny_controlnet

    s = tiny_session("kolors")
    cn = str(save_tiny_controlnet("kolors", tmp_path / "cn"))
    plain = s.generate(config("kolors", init_image=init_image, strength=0.6, steps=4))[0]
    zero = s.generate(config("kolors", init_image=init_image, strength=0.6, steps=4,
                             control=[f"lineart:{init_image}:0"], controlnet=[cn]))[0]
    steered = s.generate(config("kolors", init_image=init_image, strength=0.6, steps=4,
                                control=[f"lineart:{init_image}"], controlnet=[cn]))[0]
    assert np.array_equal(pixels(plain), pixels(zero))
    assert np.abs(pixels(plain) - pixels(steered)).max() > 0
    assert "Module: lineart_standard" in steered.params["ControlNet 0"]


def test_init_image_of_another_size_is_fitted(tiny_session, tmp_path, caplog):
    import logging

    Image.new("RGB", (100, 50), "red").save(tmp_path / "wide.png")
    with caplog.at_level(logging.WARNING, logger="loraflow"):
        r = tiny_session("sd15").generate(config("sd15", init_image=str(tmp_path / "wide.png"), strength=0.5, steps=2))[0]
    assert r.image.size == (64, 64) and "resized to 64x64" in caplog.text
