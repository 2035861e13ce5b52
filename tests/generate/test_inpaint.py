"""Inpainting on tiny models: pixels outside the mask (beyond the blurred edge) are the original's,
as A1111 pastes them back; inside they change; Kolors runs through SDXL's inpainting pipeline."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loraflow.errors import ConfigError
from loraflow.generate.options import GenerateConfig

FAMILIES = ("sd15", "sdxl", "kolors")
BLUR = 2


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("inpaint")
    Image.fromarray(data.astronaut()).resize((64, 64), Image.LANCZOS).save(folder / "init.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 24:56] = 255  # white = repaint
    Image.fromarray(mask).save(folder / "mask.png")
    return str(folder / "init.png"), str(folder / "mask.png"), mask


def config(family, init, mask, **kw):
    base = dict(model=f"tiny:{family}", prompt="a red helmet", steps=4, height=64, width=64, seed=3,
                guidance_scale=4.0, init_image=init, mask=mask, strength=1.0, mask_blur=BLUR)
    base.update(kw)
    return GenerateConfig(**base)


@pytest.mark.parametrize("family", FAMILIES)
def test_unmasked_pixels_are_kept(tiny_session, images, family):
    from scipy.ndimage import binary_dilation

    init, mask_path, mask = images
    r = tiny_session(family).generate(config(family, init, mask_path))[0]
    out = np.asarray(r.image, dtype=np.int16)
    original = np.asarray(Image.open(init).convert("RGB"), dtype=np.int16)
    # PIL's GaussianBlur(r) reaches ~3.5r (box passes); beyond that the original is pasted back unchanged
    near = binary_dilation(mask > 0, iterations=4 * BLUR)
    assert np.array_equal(out[~near], original[~near])
    assert np.abs(out[mask > 0] - original[mask > 0]).mean() > 5
    assert r.params["Mask blur"] == BLUR and r.params["Denoising strength"] == 1.0


def test_inpaint_with_controlnet(tiny_session, images, tmp_path):
    from loraflow.generate.control.tiny import save_tiny_controlnet

    init, mask_path, mask = images
    cn = str(save_tiny_controlnet("sd15", tmp_path / "cn"))
    s = tiny_session("sd15")
    plain = np.asarray(s.generate(config("sd15", init, mask_path))[0].image, dtype=np.int16)
    steered = np.asarray(s.generate(config("sd15", init, mask_path, control=[f"canny:{init}"], controlnet=[cn]))[0].image,
                         dtype=np.int16)
    assert np.abs(plain - steered)[mask > 0].max() > 0
    assert np.array_equal(plain[:8], steered[:8])  # rows far from the mask: the original in both


def test_mask_needs_init_image():
    with pytest.raises(ConfigError, match="mask needs an init_image"):
        GenerateConfig.from_dict({"prompt": "x", "mask": "m.png"})
