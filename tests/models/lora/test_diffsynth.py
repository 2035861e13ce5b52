"""DiffSynth-Studio LoRAs -> kohya files: a 1.x Lightning checkpoint with DiffSynth's own SDXL UNet names
(built here the way DiffSynth builds them) and a 2.x safetensors file give the same image as the
peft-injected original."""
import argparse
import copy

import pytest
import torch
from safetensors.torch import save_file

from loraflow.errors import LoraflowError
from loraflow.models.lora import cli
from loraflow.models.lora.diffsynth import block_prefixes, diffsynth_to_diffusers
from loraflow.models.lora.load import read_lora

from lora_helpers import ATTENTION  # noqa: E402

# DiffSynth-Studio 1.x `SDXLUNetStateDictConverter.from_diffusers` (diffsynth/models/sdxl_unet.py @ afd101f3):
# the block list of its SDXLUNet, copied as data.
BLOCK_TYPES = [
    'ResnetBlock', 'PushBlock', 'ResnetBlock', 'PushBlock', 'DownSampler', 'PushBlock',
    'ResnetBlock', 'AttentionBlock', 'PushBlock', 'ResnetBlock', 'AttentionBlock', 'PushBlock', 'DownSampler',
    'PushBlock',
    'ResnetBlock', 'AttentionBlock', 'PushBlock', 'ResnetBlock', 'AttentionBlock', 'PushBlock',
    'ResnetBlock', 'AttentionBlock', 'ResnetBlock',
    'PopBlock', 'ResnetBlock', 'AttentionBlock', 'PopBlock', 'ResnetBlock', 'AttentionBlock', 'PopBlock',
    'ResnetBlock', 'AttentionBlock', 'UpSampler',
    'PopBlock', 'ResnetBlock', 'AttentionBlock', 'PopBlock', 'ResnetBlock', 'AttentionBlock', 'PopBlock',
    'ResnetBlock', 'AttentionBlock', 'UpSampler',
    'PopBlock', 'ResnetBlock', 'PopBlock', 'ResnetBlock', 'PopBlock', 'ResnetBlock',
]


def diffsynth_names(names):
    """DiffSynth's renaming walk over sorted diffusers names (its algorithm, written out again here)."""
    block_id = {"ResnetBlock": -1, "AttentionBlock": -1, "DownSampler": -1, "UpSampler": -1}
    last = {k: "" for k in block_id}
    out = {}
    for name in sorted(names):
        parts = name.split(".")
        if parts[0] in ("down_blocks", "mid_block", "up_blocks"):
            if parts[0] == "mid_block":
                parts.insert(1, "0")
            kind = {"resnets": "ResnetBlock", "attentions": "AttentionBlock", "downsamplers": "DownSampler",
                    "upsamplers": "UpSampler"}[parts[2]]
            with_id = ".".join(parts[:4])
            if with_id != last[kind]:
                block_id[kind] += 1
            last[kind] = with_id
            while block_id[kind] < len(BLOCK_TYPES) and BLOCK_TYPES[block_id[kind]] != kind:
                block_id[kind] += 1
            parts = ["blocks", str(block_id[kind])] + parts[4:]
            if "ff" in parts:
                i = parts.index("ff")
                parts = parts[:i] + [{"ff.net.0": "act_fn", "ff.net.2": "ff"}[".".join(parts[i:i + 3])]] + parts[i + 3:]
            if "to_out" in parts:
                parts.pop(parts.index("to_out") + 1)
        out[name] = ".".join(parts)
    return out


def test_block_numbers_match_diffsynth_for_full_size_sdxl():
    """Entries of DiffSynth's own `from_civitai` table (SGM name -> DiffSynth name), via SGM -> diffusers."""
    from loraflow.models.lora.kohya_keys import sgm_to_unet

    table = {"input_blocks.3.0.op": "blocks.4.conv", "input_blocks.4.0.emb_layers.1": "blocks.6.time_emb_proj",
             "input_blocks.4.1.transformer_blocks.0.attn1.to_out.0": "blocks.7.transformer_blocks.0.attn1.to_out",
             "input_blocks.5.1.transformer_blocks.0.ff.net.2": "blocks.10.transformer_blocks.0.ff",
             "input_blocks.8.1.transformer_blocks.0.ff.net.0.proj": "blocks.18.transformer_blocks.0.act_fn.proj",
             "middle_block.0.emb_layers.1": "blocks.20.time_emb_proj", "middle_block.1.proj_in": "blocks.21.proj_in",
             "middle_block.2.emb_layers.1": "blocks.22.time_emb_proj",
             "output_blocks.0.0.skip_connection": "blocks.24.conv_shortcut",
             "output_blocks.0.1.transformer_blocks.0.attn2.to_q": "blocks.25.transformer_blocks.0.attn2.to_q"}
    prefixes = block_prefixes()
    for sgm, diffsynth in table.items():
        assert diffsynth_to_diffusers(diffsynth, prefixes) == sgm_to_unet(sgm)
    # and every module name of a full-size SDXL UNet round-trips through DiffSynth's own walk
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_sdxl_config())
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
             and n.startswith(("down_blocks", "mid_block", "up_blocks"))]
    for diffusers_name, diffsynth in diffsynth_names(names).items():
        assert diffsynth_to_diffusers(diffsynth, prefixes) == diffusers_name


def _sdxl_config():
    import json
    from importlib.resources import files

    return json.loads((files("loraflow.models") / "configs" / "sdxl" / "unet" / "config.json").read_text())


def _run(*argv):
    parser = argparse.ArgumentParser(prog="loraflow")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _peft_unet(pipe, rank, alpha):
    from peft import LoraConfig, inject_adapter_in_model

    unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=ATTENTION,
                                              init_lora_weights="gaussian"), copy.deepcopy(pipe.unet))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return unet


def _image(pipe):
    return pipe("a red fox", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_diffsynth_1x_kolors_checkpoint_converts_to_the_same_image(pipe_of, tmp_path, capsys):
    pipe = pipe_of("kolors")
    peft_unet = _peft_unet(pipe, rank=4, alpha=4)
    trained = {k: v for k, v in peft_unet.state_dict().items() if "lora_" in k}  # `.lora_A.default.weight`
    modules = {k.split(".lora_")[0] for k in trained}
    renamed = diffsynth_names(modules)
    ckpt = {renamed[k.split(".lora_")[0]] + ".lora_" + k.split(".lora_")[1]: v for k, v in trained.items()}
    assert any(k.startswith("blocks.") and ".to_out.lora_A.default." in k for k in ckpt)
    path = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=0-step=500.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)  # what `on_save_checkpoint` leaves: the LoRA tensors only
    out = tmp_path / "kolors.safetensors"

    with pytest.raises(LoraflowError, match="refusing to unpickle"):
        _run("lora", "convert", str(path), str(out), "--family", "kolors", "--lora-alpha", "4")
    with pytest.raises(LoraflowError, match="does not record alpha; pass --lora-alpha"):
        _run("lora", "convert", str(path), str(out), "--family", "kolors", "--allow-pickle")
    assert _run("lora", "convert", str(path), str(out), "--family", "kolors", "--allow-pickle",
                "--lora-alpha", "4") == 0
    lora = read_lora(out)
    assert lora.format == "kohya" and lora.rank == 4 and lora.alpha == 4.0
    assert "--lora-alpha 4" in lora.metadata["loraflow_alpha_source"]
    assert len(lora.modules()) == len(modules)

    original_unet = pipe.unet
    try:
        pipe.unet = peft_unet
        expected = _image(pipe)
    finally:
        pipe.unet = original_unet
    from loraflow.models.lora.apply import apply_loras

    base = _image(pipe)
    apply_loras(pipe, [(out, 1.0)], "kolors")
    got = _image(pipe)
    assert abs(got - expected).max() < 1e-4
    assert abs(got - base).max() > 1e-3  # the LoRA does something


def test_diffsynth_2x_safetensors_default_alpha_is_rank(pipe_of, unet_out, tmp_path):
    pipe = pipe_of("sdxl")
    peft_unet = _peft_unet(pipe, rank=2, alpha=2)  # DiffSynth 2.x: lora_alpha=None means rank
    save_file({k: v.contiguous() for k, v in peft_unet.state_dict().items() if "lora_" in k},
              tmp_path / "step-100.safetensors")
    assert _run("lora", "convert", str(tmp_path / "step-100.safetensors"), str(tmp_path / "k.safetensors"),
                "--family", "sdxl") == 0
    from loraflow.models.lora.apply import apply_loras

    apply_loras(pipe, [(tmp_path / "k.safetensors", 1.0)], "sdxl")
    assert (unet_out(pipe.unet) - unet_out(peft_unet)).abs().max() < 1e-5
