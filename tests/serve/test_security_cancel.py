"""Cancel lands inside one long call (a VAE decode, a UNet step), not only between steps."""
from __future__ import annotations

import pytest
import torch

from loraflow.serve.cancel import blocks, cancel_points


class Cancelled(Exception):
    pass


@pytest.fixture(scope="module")
def pipe():
    from loraflow.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline("sdxl")


def test_a_cancel_during_a_vae_decode_stops_it_before_the_next_block(pipe):
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:  # the cancel arrives while the decode is running
            raise Cancelled

    latents = torch.randn(1, pipe.vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with cancel_points(pipe, check), pytest.raises(Cancelled), torch.no_grad():
        pipe.vae.decode(latents)
    assert len(calls) == 2  # stopped at the second decoder block, the rest never ran
    decoder_blocks = [b for b in blocks(pipe) if any(b is m for m in pipe.vae.decoder.modules())]
    assert len(decoder_blocks) > 2


def test_cancel_points_change_nothing_and_are_removed(pipe):
    latents = torch.randn(1, pipe.vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = pipe.vae.decode(latents).sample
        seen = []
        with cancel_points(pipe, lambda: seen.append(1)):
            hooked = pipe.vae.decode(latents).sample
        after = len(seen)
        pipe.vae.decode(latents)
    assert torch.equal(plain, hooked) and after > 0 and len(seen) == after
