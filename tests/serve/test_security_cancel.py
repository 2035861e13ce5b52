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


def test_a_workflow_cancel_lands_inside_the_vae_decode_node(server):
    """ComfyUI path: the executor hooks the pipeline of a node's MODEL/VAE inputs while the node runs."""
    from loraflow.serve.comfy.values import WorkflowJob
    from loraflow.serve.context import JobCancelled, JobContext, WorkerState
    from loraflow.serve.store import Job

    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sdxl"}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}}}
    state = server.thread.state
    ctx = JobContext(Job("cancel-test", 1, "workflow", {}, "running", 0.0), state.paths, state.models, state.bus,
                     state.store, WorkerState())
    calls, events = [], []
    ctx.emit = lambda type_, **data: events.append((type_, data))

    def check():  # calls 1-3: before nodes 1, 2, 3; call 4 is the first block inside VAEDecode
        calls.append(1)
        if len(calls) == 5:
            raise JobCancelled("cancelled inside the decode")

    ctx.check_cancel = check
    with pytest.raises(JobCancelled):
        from loraflow.serve.comfy.executor import run_prompt

        run_prompt(ctx, WorkflowJob(prompt, ["4"]))
    interrupted = [data for type_, data in events if type_ == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_id"] == "3" and sorted(interrupted[0]["executed"]) == ["1", "2"]
    assert events[-1] == ("executing", {"node": None, "display_node": None, "prompt_id": "cancel-test"})
    assert not list(state.paths.outputs.glob("never*"))
