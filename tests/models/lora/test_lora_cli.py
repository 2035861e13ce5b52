"""`loraflow lora info|convert`, run through the command's own parser."""
import argparse
import subprocess
import sys

import pytest
import torch

from loraflow.errors import LoraflowError
from loraflow.models.lora import cli
from loraflow.models.lora.load import read_lora
from loraflow.models.lora.save import save_lora


def _run(*argv):
    parser = argparse.ArgumentParser(prog="loraflow")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def sdxl_file(pipes, trained, tmp_path):
    _, _, unet_sd, te_sds = trained(pipes("sdxl"), rank=4, alpha=2, text=True)
    return save_lora(tmp_path / "style.safetensors", unet_sd, te_sds, family="sdxl", rank=4, alpha=2,
                     metadata={"ss_learning_rate": "0.0001"})


def test_info_shows_format_rank_alpha_targets_and_metadata(sdxl_file, capsys):
    assert _run("lora", "info", str(sdxl_file)) == 0
    out = capsys.readouterr().out
    for line in ("format:      kohya", "family:      sdxl", "rank:        4", "alpha:       2",
                 "unet:attn1.to_q", "text_encoder_2:self_attn.q_proj", "ss_network_alpha: 2.0",
                 "ss_learning_rate: 0.0001", "modelspec.architecture: stable-diffusion-xl-v1-base/lora"):
        assert line in out
    assert "keys:        unet " in out and "text encoders " in out


def test_convert_writes_the_requested_layout(sdxl_file, tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    assert _run("lora", "convert", str(sdxl_file), str(out), "--to", "diffusers") == 0
    assert read_lora(out).format == "diffusers"
    back = tmp_path / "k.safetensors"
    assert _run("lora", "convert", str(out), str(back), "--to", "kohya", "--family", "sdxl") == 0
    a, b = read_lora(sdxl_file).state_dict, read_lora(back).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_to_another_family_is_refused(sdxl_file, tmp_path):
    with pytest.raises(LoraflowError, match="appears to be a SDXL LoRA"):
        _run("lora", "convert", str(sdxl_file), str(tmp_path / "x.safetensors"), "--family", "sd15")
    with pytest.raises(SystemExit):  # argparse: invalid choice
        _run("lora", "convert", str(sdxl_file), str(tmp_path / "x.safetensors"), "--to", "ckpt")


def test_registering_the_command_does_not_import_torch():
    code = ("import argparse, sys; from loraflow.models.lora import cli; "
            "cli.register(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
