"""Fixtures for the server tests: a models folder with a tiny SDXL model and a tiny LoRA, and real
uvicorn servers on free loopback ports (in a thread; `test_restart` also runs one as a process)."""
from __future__ import annotations

from pathlib import Path

import pytest

# fastapi, uvicorn and httpx come with the dev install: without them these tests fail, not skip.
import fastapi  # noqa: F401
import httpx
import uvicorn  # noqa: F401


def make_tiny_lora(pipe, path: Path, seed: int = 0, rank: int = 4) -> Path:
    """A peft LoRA on a copy of the tiny UNet (random non-zero lora_B), saved in diffusers key format."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from loraflow.models.lora.save import save_lora

    gen = torch.Generator().manual_seed(seed)
    unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                                   copy.deepcopy(pipe.unet))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    save_lora(path, get_peft_model_state_dict(unet), None, family="sdxl", rank=rank, alpha=float(rank),
              fmt="diffusers", dtype=torch.float32)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """models/tiny-sdxl (diffusers folder), models/loras/style.safetensors, a tiny ControlNet, IP-Adapter
    (models/ipadapter/tiny-ipa) and CLIP vision encoder (models/clip_vision/tiny-vision)."""
    from loraflow.models.tiny import build_tiny_pipeline, save_tiny_model

    root = tmp_path_factory.mktemp("models")
    save_tiny_model("sdxl", root / "tiny-sdxl")
    (root / "loras").mkdir()
    make_tiny_lora(build_tiny_pipeline("sdxl"), root / "loras" / "style.safetensors")
    try:
        from loraflow.generate.control.tiny import save_tiny_controlnet

        save_tiny_controlnet("sdxl", root / "controlnet" / "tiny-cn")
    except ImportError:  # ControlNet support not in this build
        pass
    from loraflow.models.tiny_ip_adapter import save_tiny_ip_adapter, tiny_image_encoder

    save_tiny_ip_adapter("sdxl", root / "ipadapter" / "tiny-ipa")  # h94 layout: sdxl_models/, models/image_encoder
    tiny_image_encoder(seed=5).save_pretrained(root / "clip_vision" / "tiny-vision")  # another encoder, same widths
    return root


@pytest.fixture
def start_server(models_dir, tmp_path):
    """`start_server(**options)` -> (url, ServerThread); servers are stopped after the test."""
    from loraflow.serve.options import ServeOptions
    from loraflow.serve.server import ServerThread

    started = []

    def start(**options):
        opts = ServeOptions(**{"port": 0, "models_dir": str(models_dir), "outputs_dir": str(tmp_path / "outputs"),
                               "device": "cpu", **options})
        server = ServerThread(opts)
        started.append(server)
        return server.start(), server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server):
    url, thread = start_server()
    with httpx.Client(base_url=url, timeout=60) as client:
        client.thread = thread
        yield client
