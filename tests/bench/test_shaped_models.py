"""bench/shaped_models.py: the scaled-down SDXL/Kolors keep the full-size models' FLOP shares."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import shaped_models  # noqa: E402


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_bench_scale_keeps_flop_shares(family):
    full, small = shaped_models.flops(family, 1, rank=16), shaped_models.flops(family, 4, rank=4)
    for part in ("vae_encode", "text_encode"):
        share_full = full[part] / sum(full.values())
        share_small = small[part] / sum(small.values())
        assert share_small == pytest.approx(share_full, rel=0.15), part
    # the scaled model is not lighter on the UNet side: a conservative caching bound
    assert shaped_models.caching_bound(small) <= shaped_models.caching_bound(full) * 1.01
    assert full["unet_step"] / small["unet_step"] == pytest.approx(4 ** 3, rel=0.25)  # widths/4, pixels/4


def test_full_size_configs_are_the_real_ones():
    sdxl, kolors = shaped_models.shapes("sdxl"), shaped_models.shapes("kolors")
    assert sdxl["unet"]["block_out_channels"] == [320, 640, 1280]
    assert sdxl["unet"]["transformer_layers_per_block"] == [1, 2, 10]
    assert [c["hidden_size"] for c in sdxl["clip"]] == [768, 1280]
    assert sdxl["unet"]["projection_class_embeddings_input_dim"] == 2816
    assert kolors["unet"]["projection_class_embeddings_input_dim"] == 5632  # 4096 + 6 x 256
    assert kolors["chatglm"]["num_layers"] == 28 and kolors["chatglm"]["hidden_size"] == 4096


def test_scale_must_be_a_square():
    with pytest.raises(SystemExit, match="square"):
        shaped_models.shapes("sdxl", 8)
