"""Two CPU processes (gloo, via torchrun as `accelerate launch` uses it) = one process accumulating
two micro-batches: DDP averages gradients exactly as accumulation does, and each micro-batch's data
and noise depend only on its global index."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from train_helpers import base_config, make_shapes_dataset
from loraflow.train.trainer import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_gradient_accumulation(tmp_path):
    dataset = make_shapes_dataset(tmp_path / "ds", n=8)
    common = base_config(tmp_path, dataset, batch_size=2, max_steps=3, learning_rate=1e-2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "loraflow", "train", "--model", "tiny:sdxl", "--dataset", str(dataset), "--resolution", "64",
           "--lora-rank", "4", "--batch-size", "2", "--max-steps", "3", "--learning-rate", "1e-2",
           "--output", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 steps x 1 accumulation x 2 process(es)" in done.stdout

    train(dict(common, output=str(tmp_path / "one"), gradient_accumulation=2))
    two = load_file(tmp_path / "two" / "checkpoints" / "step-000003" / "lora.safetensors")
    one = load_file(tmp_path / "one" / "checkpoints" / "step-000003" / "lora.safetensors")
    assert two.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "two" / "lora.safetensors").is_file()
