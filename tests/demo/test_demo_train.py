"""The demo model's training script runs end to end (a few steps) and writes a diffusers folder that
loads as an SDXL-family model and generates."""
from __future__ import annotations

from loraflow.demo.train_model import DemoTrainConfig, train_demo_model
from loraflow.generate.options import GenerateConfig
from loraflow.generate.session import GenerationSession


def test_train_demo_model_smoke(tmp_path):
    lines = []
    cfg = DemoTrainConfig(out=str(tmp_path / "demo"), images=8, size=64, vae_steps=2, decoder_steps=2, decoder_images=8,
                          unet_steps=2, batch_size=4, log_every=1, save_every=1, threads=1)
    out = train_demo_model(cfg, say=lines.append)
    assert any(line.startswith("decoder step 2/2") for line in lines)
    assert any(line.startswith("unet step 2/2") for line in lines) and "snapshot at step 1" in lines
    assert (tmp_path / "demo-snapshot" / "model_index.json").is_file()
    cfg = GenerateConfig(model=str(out), prompt="a red circle in the center, white background", steps=2,
                         height=64, width=64, seed=0)
    session = GenerationSession.from_options(cfg)
    assert session.family.name == "sdxl"
    assert session.generate(cfg)[0].image.size == (64, 64)
