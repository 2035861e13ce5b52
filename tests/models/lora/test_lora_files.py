"""Saving, reading and converting LoRA files (no pipeline calls)."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loraflow.errors import InputError, ModelLoadError
from loraflow.models.lora.formats import detect_lora_format
from loraflow.models.lora.load import convert_lora, read_lora
from loraflow.models.lora.save import save_lora


def _keys_and_meta(path):
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys()), dict(f.metadata())


def test_sdxl_kohya_file_uses_sgm_names_and_stores_alpha(pipes, trained, tmp_path):
    _, _, unet_sd, te_sds = trained(pipes("sdxl"), rank=4, alpha=2, text=True)
    path = save_lora(tmp_path / "style.safetensors", unet_sd, te_sds, family="sdxl", rank=4, alpha=2,
                     metadata={"ss_learning_rate": 1e-4, "ss_num_train_images": 12},
                     tag_frequency={"img": {"cat": 3}}, resolution=1024)
    keys, meta = _keys_and_meta(path)
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0.alpha" in keys
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_v.alpha" in keys
    assert not any("down_blocks" in k or "lora_A" in k for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_mlp_fc1") for k in keys)
    tensors = load_file(path)
    assert {tensors[k].item() for k in keys if k.endswith(".alpha")} == {2.0}
    assert tensors[f"{name}.lora_down.weight"].dtype == torch.float16  # default save dtype
    assert tensors[f"{name}.lora_down.weight"].shape[0] == 4
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_resolution"] == "(1024, 1024)" and meta["modelspec.resolution"] == "1024x1024"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.sai_model_spec"] and meta["modelspec.implementation"]
    assert meta["ss_output_name"] == meta["modelspec.title"] == "style"
    assert json.loads(meta["ss_tag_frequency"]) == {"img": {"cat": 3}}
    assert meta["ss_learning_rate"] == "0.0001" and meta["ss_num_train_images"] == "12"
    from loraflow.models.hashing import lora_hash

    assert meta["sshs_model_hash"][:12] == lora_hash(path)  # A1111 "Lora hashes" links up
    assert len(meta["sshs_legacy_hash"]) == 8


def test_sd15_kohya_file_uses_diffusers_names(pipes, trained, tmp_path):
    _, _, unet_sd, te_sds = trained(pipes("sd15"), text=True)
    path = save_lora(tmp_path / "a.safetensors", unet_sd, te_sds, family="sd15", rank=4, alpha=4)
    keys, meta = _keys_and_meta(path)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha" in keys
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_diffusers_format_stores_alpha_in_adapter_metadata(pipes, trained, tmp_path):
    _, _, unet_sd, te_sds = trained(pipes("sdxl"), rank=4, alpha=8, text=True)
    path = save_lora(tmp_path / "d.safetensors", unet_sd, te_sds, family="sdxl", rank=4, alpha=8, fmt="diffusers")
    keys, meta = _keys_and_meta(path)
    assert all(k.split(".")[0] in ("unet", "text_encoder", "text_encoder_2") and ".lora_" in k for k in keys)
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert adapter["unet.r"] == 4 and adapter["unet.lora_alpha"] == 8 and adapter["text_encoder_2.lora_alpha"] == 8
    lora = read_lora(path)
    assert (lora.format, lora.rank, lora.alpha) == ("diffusers", 4, 8)


def test_kolors_refuses_text_encoder_weights(pipes, trained, tmp_path):
    _, _, unet_sd, te_sds = trained(pipes("sdxl"), text=True)
    with pytest.raises(InputError, match="kolors has no text encoder"):
        save_lora(tmp_path / "k.safetensors", unet_sd, te_sds, family="kolors", rank=4, alpha=4)


def test_failed_write_leaves_no_partial_file(pipes, trained, tmp_path, monkeypatch):
    _, _, unet_sd, _ = trained(pipes("sd15"))
    target = tmp_path / "out.safetensors"
    save_lora(target, unet_sd, family="sd15", rank=4, alpha=4)
    before = target.read_bytes()

    def crash(src, dst):  # the temp file is written in full; the rename never happens
        raise OSError("disk full")

    monkeypatch.setattr("loraflow.atomic.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_lora(target, unet_sd, family="sd15", rank=4, alpha=1)
    with pytest.raises(OSError):
        save_lora(tmp_path / "new.safetensors", unet_sd, family="sd15", rank=4, alpha=1)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]  # no temp or partial files


def test_detect_lora_format():
    t = torch.zeros(2, 2)
    assert detect_lora_format({"lora_unet_x.lora_down.weight": t, "lora_unet_x.alpha": t}) == "kohya"
    assert detect_lora_format({"unet.down_blocks.0.to_q.lora_A.weight": t}) == "diffusers"
    assert detect_lora_format({"down_blocks.0.to_q.lora_A.weight": t}) == "peft"
    assert detect_lora_format({"lora_unet_x.hada_w1_a": t}) == "lycoris"
    # the one LyCORIS rule (the loader's too): a kohya key other than lora_up/lora_down/alpha, or a
    # peft/diffusers DoRA magnitude; the old marker list called these three plain LoRA or unknown
    plain = {"lora_unet_x.lora_down.weight": t, "lora_unet_x.lora_up.weight": t}
    assert detect_lora_format({**plain, "lora_unet_x.lora_mid.weight": t}) == "lycoris"  # LoCon (Tucker)
    assert detect_lora_format({"lora_unet_x.hada_w2_a": t}) == "lycoris"
    assert detect_lora_format({"unet.down_blocks.0.to_q.lora_A.weight": t,
                               "unet.down_blocks.0.to_q.lora_magnitude_vector": t}) == "lycoris"  # peft DoRA
    assert detect_lora_format({"model.diffusion_model.x.weight": t}) == "unknown"


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_convert_round_trip_is_lossless(pipes, trained, tmp_path, fmt):
    _, _, unet_sd, te_sds = trained(pipes("sdxl"), rank=4, alpha=3, text=True)
    src = save_lora(tmp_path / "src.safetensors", unet_sd, te_sds, family="sdxl", rank=4, alpha=3, fmt=fmt)
    other = "diffusers" if fmt == "kohya" else "kohya"
    mid = convert_lora(src, tmp_path / "mid.safetensors", to=other)
    back = convert_lora(mid, tmp_path / "back.safetensors", to=fmt, family="sdxl")
    a, b = load_file(src), load_file(back)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lora_a, lora_m = read_lora(src), read_lora(mid)
    assert lora_m.format == other and lora_m.alphas.keys() == lora_a.alphas.keys()
    assert set(lora_m.alphas.values()) == set(lora_a.alphas.values()) == {3.0}  # saved with alpha=3
    assert _keys_and_meta(back)[1]["ss_network_alpha"] == "3.0"  # training metadata travels along
    from loraflow.models.hashing import lora_hash

    assert _keys_and_meta(mid)[1]["sshs_model_hash"][:12] == lora_hash(mid)  # recomputed for the new bytes


def test_convert_to_peft_is_unet_only(pipes, trained, tmp_path):
    _, _, unet_sd, te_sds = trained(pipes("sd15"), rank=4, alpha=2, text=True)
    unet_only = save_lora(tmp_path / "u.safetensors", unet_sd, family="sd15", rank=4, alpha=2)
    peft_file = convert_lora(unet_only, tmp_path / "p.safetensors", to="peft")
    lora = read_lora(peft_file)
    assert lora.format == "peft" and set(lora.alphas.values()) == {2.0}  # saved with alpha=2 (rank 4)
    assert lora.alphas.keys() == read_lora(unet_only).alphas.keys()
    both = save_lora(tmp_path / "b.safetensors", unet_sd, te_sds, family="sd15", rank=4, alpha=2)
    with pytest.raises(InputError, match="peft format holds one model"):
        convert_lora(both, tmp_path / "p2.safetensors", to="peft")


def test_pickle_is_refused_unless_allowed(pipes, trained, tmp_path):
    _, _, unet_sd, _ = trained(pipes("sd15"))
    path = save_lora(tmp_path / "a.safetensors", unet_sd, family="sd15", rank=4, alpha=2)
    pt = tmp_path / "a.pt"
    torch.save(load_file(path), pt)
    with pytest.raises(ModelLoadError, match="refusing to unpickle"):
        read_lora(pt)
    from_pickle = read_lora(pt, allow_pickle=True)
    assert from_pickle.alphas.keys() == read_lora(path).alphas.keys()
    assert set(from_pickle.alphas.values()) == {2.0} and from_pickle.rank == 4  # as saved, not alpha = rank


class _RunsCodeWhenUnpickled:
    """Unpickling this calls `open(marker, "w")`: a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused_even_when_allowed(tmp_path, capsys):
    """allow_pickle means torch.load(weights_only=True): tensors only, never arbitrary globals."""
    from loraflow.cli import main

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "payload": _RunsCodeWhenUnpickled(marker)}, evil)
    with pytest.raises(ModelLoadError, match="evil.pt: cannot read") as err:
        read_lora(evil, allow_pickle=True)
    assert "\n" not in str(err.value)
    assert main(["lora", "info", str(evil), "--allow-pickle"]) == 2
    assert main(["lora", "convert", str(evil), str(tmp_path / "out.safetensors"), "--allow-pickle"]) == 2
    assert "evil.pt" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        read_lora(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        read_lora(broken)
    odd = tmp_path / "odd.safetensors"
    save_file({"model.diffusion_model.conv.weight": torch.zeros(2)}, odd)
    with pytest.raises(InputError, match="not a LoRA state dict"):
        read_lora(odd)
    stray = tmp_path / "stray.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 2), "lora_unet_conv_in.lora_up.weight":
               torch.zeros(2, 2), "lora_unet_conv_in.something": torch.zeros(1)}, stray)
    with pytest.raises(InputError, match="lora_unet_conv_in.something"):
        read_lora(stray)


def test_info_fields_are_the_facts_lora_info_prints():
    """`info_fields` (what the web UI's LoRA list shows) and `format_info`'s lines are one source."""
    from loraflow.models.lora.info import format_info, info_fields
    from loraflow.models.lora.load import lora_from_state_dict

    sd = {}
    for letter, rank, alpha in (("q", 4, 2.0), ("k", 4, 2.0), ("v", 8, 8.0)):
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_{letter}"
        sd |= {f"{name}.lora_down.weight": torch.zeros(rank, 16), f"{name}.lora_up.weight": torch.zeros(16, rank),
               f"{name}.alpha": torch.tensor(alpha)}
    lora = lora_from_state_dict(sd, {"ss_sd_model_name": "base.safetensors"}, "x.safetensors")
    fields = info_fields(lora)
    # three kohya UNet modules: two at rank 4 / alpha 2, one at rank 8 / alpha 8; 9 keys
    assert {k: fields[k] for k in ("format", "type", "rank", "alpha", "modules", "keys", "base_model")} == {
        "format": "kohya", "type": "lora", "rank": "4 (2 modules), 8 (1 modules)",
        "alpha": "2 (2 modules), 8 (1 modules)", "modules": "unet 3", "keys": "unet 9, text encoders 0",
        "base_model": "base.safetensors"}
    text = format_info(lora).splitlines()
    assert text[:len(fields)] == [f"{k.replace('_', ' ') + ':':<13}{v}" for k, v in fields.items()]
    assert "base model:  base.safetensors" in text
