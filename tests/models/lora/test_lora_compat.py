"""The compatibility check: full-size SDXL / Kolors / SD1.5 key sets built on the meta device, files in
the layouts people ship, and the expectations each tool's own rule gives (stated per test)."""
import argparse
import json

import pytest
import torch

from loraflow.models.lora import cli, kohya_keys
from loraflow.models.lora.compat import check_file, check_lora, full_size_inventory, inventory
from loraflow.models.lora.load import lora_from_state_dict, read_lora
from loraflow.models.single_file import shipped_config_dir

from lora_helpers import ATTENTION  # noqa: E402

TE_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def _run(*argv):
    parser = argparse.ArgumentParser(prog="loraflow")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def sdxl():
    return full_size_inventory(shipped_config_dir("sdxl"))


@pytest.fixture(scope="module")
def kolors():
    """Kolors' UNet: SDXL's with ChatGLM's 4096-wide states projected in and a 5632-wide add embedding
    (Kwai-Kolors/Kolors-diffusers unet/config.json); its text encoder is not LoRA-trained."""
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(shipped_config_dir("sdxl") / "unet")
    config.update(encoder_hid_dim_type="text_proj", encoder_hid_dim=4096, projection_class_embeddings_input_dim=5632)
    with torch.device("meta"):
        return inventory({"unet": UNet2DConditionModel.from_config(config)})


def _is_target(target, parts):
    return any(target.endswith("." + p) for p in parts)


def _rank1(shape):
    """down (1, in, kh, kw), up (out, 1, 1, 1): the smallest LoRA of a module of this shape."""
    return torch.zeros(1, *shape[1:]), torch.zeros(shape[0], 1, *[1] * (len(shape) - 2))


def _kohya(modules, family, spell_sgm=True):
    sd = {}
    for target, shape in modules.items():
        component, _, module = target.partition(".")
        if component == "unet" and not spell_sgm:
            name = "lora_unet_" + module.replace(".", "_")
        else:
            name = kohya_keys.diffusers_to_kohya(component, module, family)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = _rank1(shape)
        sd[f"{name}.alpha"] = torch.tensor(1.0)
    return lora_from_state_dict(sd)


def _select(inv, parts, components=("unet", "text_encoder", "text_encoder_2")):
    return {t: s for t, s in inv.items() if t.split(".")[0] in components and _is_target(t, parts)}


CONV = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")


def test_full_size_sdxl_kohya_file_loads_everywhere(sdxl):
    modules = {**_select(sdxl, ATTENTION + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"] + list(CONV),
                         ("unet",)), **_select(sdxl, TE_PARTS, ("text_encoder", "text_encoder_2"))}
    report = check_lora(_kohya(modules, "sdxl"), sdxl)
    assert report.modules == len(modules) > 700
    for tool, result in report.tools.items():
        assert (tool, result.loaded, result.ignored) == (tool, len(modules), [])
    assert report.shape_mismatches == [] and report.warnings() == []


def test_diffusers_layout_twin_loses_attention_in_comfyui(sdxl):
    """ComfyUI maps diffusers-layout UNet keys only as `.processor.to_q` (old attention processors):
    every plain `attn*.to_*` module is ignored, the rest loads. A1111 reads no diffusers layout."""
    modules = _select(sdxl, ATTENTION + ["proj_in", "ff.net.2", "conv1"], ("unet",))
    sd = {}
    for target, shape in modules.items():
        sd[f"{target}.lora_A.weight"], sd[f"{target}.lora_B.weight"] = _rank1(shape)
    report = check_lora(lora_from_state_dict(sd), sdxl)
    attention = {t for t in modules if ".to_" in t}
    assert set(report.tools["ComfyUI"].ignored) == attention
    assert report.tools["ComfyUI"].loaded == len(modules) - len(attention)
    assert report.tools["A1111"].loaded == 0
    assert report.tools["diffusers"].loaded == len(modules)


def test_a1111_misplaces_diffusers_named_sdxl_upsamplers(sdxl):
    """A1111 renames diffusers-spelled kohya keys with SD1.5's arithmetic: up_blocks.0's upsampler goes
    to `output_blocks.2.1.conv`, which SDXL (attention in up_blocks.0) has at `.2.2.conv`."""
    modules = _select(sdxl, ATTENTION + ["upsamplers.0.conv", "downsamplers.0.conv", "conv1"], ("unet",))
    report = check_lora(_kohya(modules, "sdxl", spell_sgm=False), sdxl)
    assert report.tools["A1111"].ignored == ["lora_unet_up_blocks_0_upsamplers_0_conv"]
    assert report.tools["ComfyUI"].ignored == [] and report.tools["diffusers"].ignored == []


def test_full_size_kolors_kohya_file_loads_everywhere(kolors):
    modules = _select(kolors, ATTENTION + list(CONV) + ["encoder_hid_proj"], ("unet",))
    assert "unet.encoder_hid_proj" in modules
    report = check_lora(_kohya(modules, "kolors"), kolors)
    assert {t: r.loaded for t, r in report.tools.items()} == {t: len(modules) for t in report.tools}


def test_lycoris_types_per_tool(sdxl):
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    out_dim, in_dim = sdxl["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    lora = lora_from_state_dict({f"{name}.hada_w1_a": torch.zeros(out_dim, 2), f"{name}.hada_w1_b": torch.zeros(2, in_dim),
                                 f"{name}.hada_w2_a": torch.zeros(out_dim, 2), f"{name}.hada_w2_b": torch.zeros(2, in_dim)})
    report = check_lora(lora, sdxl)
    assert report.tools["ComfyUI"].loaded == report.tools["A1111"].loaded == 1
    assert report.tools["diffusers"].ignored == [name]  # diffusers' kohya converter reads no LoHa


def test_shape_mismatch_is_reported_as_shape_mismatch(sdxl):
    """An SD2-shaped cross-attention (1024-wide context) under SDXL's names: the names resolve."""
    target = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    lora = _kohya({target: (640, 1024)}, "sdxl")
    report = check_lora(lora, sdxl)
    assert report.shape_mismatches == [(target, (640, 2048), (640, 1024))]
    assert any("shape mismatch at " + target in w and "(640, 2048)" in w for w in report.warnings())


def test_check_measures_the_effect_and_stores_the_table(pipes, trained, tmp_path, capsys):
    from loraflow.models.lora.save import save_lora

    pipe = pipes("sd15")
    _, _, unet_sd, _ = trained(pipe, rank=4, alpha=4)
    path = save_lora(tmp_path / "a.safetensors", unet_sd, family="sd15", rank=4, alpha=4, dtype=torch.float32)
    report = check_file(path, pipe=pipe)
    assert report.effect > 1.0 / 255 and not any("effect" in w for w in report.warnings())
    # the tiny UNet has 1 layer per level: A1111's fixed 3-slot arithmetic misses its up blocks, the others don't
    assert report.tools["ComfyUI"].ignored == report.tools["diffusers"].ignored == []
    stored = json.loads(read_lora(path).metadata["loraflow_compat"])
    assert stored["effect"] == report.effect and stored["tools"]["ComfyUI"]["loaded"] == report.modules
    zero = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in unet_sd.items()}
    dead = save_lora(tmp_path / "dead.safetensors", zero, family="sd15", rank=4, alpha=4, dtype=torch.float32)
    assert any("no measurable effect" in w for w in check_file(dead, pipe=pipe).warnings())
    # the CLI without a model: keys against full-size SD1.5, table printed
    assert _run("lora", "check", str(path)) == 0
    out = capsys.readouterr().out
    assert "ComfyUI" in out and "A1111" in out and "diffusers" in out and "shape mismatch" in out


def test_check_cli_with_a_model_measures_the_effect(pipes, trained, tmp_path, capsys):
    from loraflow.models.lora.save import save_lora

    _, _, unet_sd, _ = trained(pipes("sdxl"), rank=4, alpha=4)
    path = save_lora(tmp_path / "x.safetensors", unet_sd, family="sdxl", rank=4, alpha=4, dtype=torch.float32)
    assert _run("lora", "check", str(path), "--model", "tiny:sdxl") == 0
    out = capsys.readouterr().out
    assert "effect: mean pixel change" in out and "ComfyUI" in out
    assert json.loads(read_lora(path).metadata["loraflow_compat"])["effect"] > 0


def test_extract_cli_names_a_model_that_does_not_differ(tmp_path):
    from loraflow.errors import InputError

    with pytest.raises(InputError, match="does not differ from the base model"):
        _run("lora", "extract", "tiny:sdxl", "tiny:sdxl", str(tmp_path / "e.safetensors"), "--rank", "2")
