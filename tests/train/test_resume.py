"""Checkpoints: resume equals an uninterrupted run; a kill during a save loses nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import base_config
from loraflow.train import checkpoint
from loraflow.train.trainer import train


def _final_state(output: Path, step: int) -> dict:
    return load_file(output / "checkpoints" / f"step-{step:06d}" / "lora.safetensors")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shapes_dataset):
    tmp = tmp_path_factory.mktemp("full")
    # batch 5 over 24 images: 5 batches/epoch, so the run crosses an epoch boundary
    config = base_config(tmp, shapes_dataset, max_steps=6, save_every=3, batch_size=5, lr_scheduler="cosine",
                         lr_warmup_steps=2, learning_rate=1e-2)
    train(config)
    return config


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, uninterrupted):
    full = Path(uninterrupted["output"])
    assert [p.name for p in checkpoint.list_checkpoints(full)] == ["step-000003", "step-000006"]
    resumed = dict(uninterrupted, output=str(tmp_path / "resumed"),
                   resume=str(full / "checkpoints" / "step-000003"))
    train(resumed)
    _assert_same(_final_state(full, 6), _final_state(tmp_path / "resumed", 6))
    assert load_file(full / "lora.safetensors").keys() == load_file(tmp_path / "resumed" / "lora.safetensors").keys()


def test_resume_errors(tmp_path, shapes_dataset):
    from loraflow.errors import ConfigError

    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        train(base_config(tmp_path, shapes_dataset, resume=str(tmp_path)))


KILLED_RUN = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from loraflow.train import checkpoint
    real = checkpoint.atomic_save_safetensors
    calls = {"n": 0}
    def slow(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # second checkpoint: LoRA file written, optimizer file not yet
            print("SAVING", flush=True)
            time.sleep(120)
        return real(tensors, path, metadata)
    checkpoint.atomic_save_safetensors = slow
    from loraflow.train.trainer import train
    train(json.loads(sys.argv[1]))
""")


def test_kill_9_during_save_leaves_previous_checkpoint(tmp_path, shapes_dataset):
    config = base_config(tmp_path, shapes_dataset, max_steps=4, save_every=1, output=str(tmp_path / "killed"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if line.strip() == "SAVING" or time.time() > deadline:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    out = tmp_path / "killed"
    assert (out / "checkpoints" / "step-000002.tmp").is_dir()  # the save really was cut short
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-000001"]
    # the survivor resumes, and the result equals an uninterrupted run
    train(dict(config, resume="latest"))
    assert not (out / "checkpoints" / "step-000002.tmp").exists()
    train(dict(config, output=str(tmp_path / "clean")))
    _assert_same(_final_state(tmp_path / "clean", 4), _final_state(out, 4))
