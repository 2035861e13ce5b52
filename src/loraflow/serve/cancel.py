"""Cancel points inside single long calls. A job is cancelled at its next denoising step, but one
step of a large UNet, or one VAE decode of a large image, can run for minutes; a forward pre-hook
on each UNet and VAE block checks the job's cancel flag before the block runs, so a cancel lands
within one block. The hooks only read a flag: outputs are unchanged.

    with cancel_points(session.pipe, ctx.check_cancel):
        session.generate(cfg, progress=ctx.progress)
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable

# (component, block lists) of diffusers' UNet2DConditionModel and AutoencoderKL
_BLOCKS = (("unet", ("down_blocks", "mid_block", "up_blocks")),
           ("vae.decoder", ("mid_block", "up_blocks")), ("vae.encoder", ("down_blocks", "mid_block")))


def blocks(pipe) -> list:
    found = []
    for component, names in _BLOCKS:
        owner = pipe
        for part in component.split("."):
            owner = getattr(owner, part, None)
        for name in names:
            block = getattr(owner, name, None) if owner is not None else None
            if block is None:
                continue
            found.extend(block if hasattr(block, "__iter__") else [block])
    return found


@contextmanager
def cancel_points(pipe, check: Callable[[], None]):
    """`check()` (raises to cancel) runs before every UNet and VAE block of `pipe` inside the block."""
    handles = [block.register_forward_pre_hook(lambda module, args: check()) for block in blocks(pipe)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def cancel_points_in(pipes: Iterable, check: Callable[[], None]):
    """`cancel_points` over several pipelines at once (each distinct pipeline hooked once)."""
    unique: list = []
    for pipe in pipes:
        if not any(pipe is seen for seen in unique):  # MODEL, CLIP and VAE of one checkpoint share a pipe
            unique.append(pipe)
    with ExitStack() as stack:
        for pipe in unique:
            stack.enter_context(cancel_points(pipe, check))
        yield
