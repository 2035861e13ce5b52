"""LyCORIS files (LoCon, LoHa, LoKr, DoRA, full diffs) in pipelines.

Expected values come from outside the code under test: peft's own LoHa / LoKr / DoRA layers computing
on the fly, and the papers' formulas written out here (LoHa: (w1a w1b) * (w2a w2b) * alpha / r;
LoKr: kron(w1, w2) * alpha / r; DoRA: m (W + dW) / ||W + dW||), built with other torch ops than
the loader's (block matrices for kron, matmul chains for Tucker products).
"""
import copy

import pytest
import torch
from safetensors.torch import save_file

from loraflow.errors import InputError
from loraflow.models.lora import kohya_keys
from loraflow.models.lora.apply import apply_loras, remove_loras
from loraflow.models.lora.load import read_lora
from loraflow.models.lora.lycoris import Adapter

from lora_helpers import ATTENTION  # noqa: E402

TOL = 2e-5
CONV = ["conv1", "conv2"]


def _close(a, b, tol=TOL):
    return (a - b).abs().max().item() <= tol


def _rand(*shape, seed=0, scale=0.3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---- deltas against the papers' formulas ---------------------------------------------------------
def _kron_blocks(a, b):
    """Kronecker product from its definition: block (i, j) is a[i, j] * b."""
    return torch.cat([torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])], dim=0)


def _tucker_reference(t, wa, wb):
    """W[p, q, k, l] = sum_ij t[i, j, k, l] wa[i, p] wb[j, q], as a matmul per kernel position."""
    per_pos = wa.T @ t.permute(2, 3, 0, 1) @ wb  # (kh, kw, out, in)
    return per_pos.permute(2, 3, 0, 1)


def test_loha_delta_is_the_hadamard_product_of_two_low_rank_matrices():
    w1a, w1b, w2a, w2b = _rand(6, 2, seed=1), _rand(2, 5, seed=2), _rand(6, 2, seed=3), _rand(2, 5, seed=4)
    adapter = Adapter("loha", {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}, alpha=1.0)
    expected = (w1a @ w1b) * (w2a @ w2b) * (1.0 / 2)
    assert _close(adapter.delta((6, 5)), expected, 1e-6)


def test_loha_tucker_delta():
    t1, t2 = _rand(2, 2, 3, 3, seed=1), _rand(2, 2, 3, 3, seed=2)
    w1a, w1b, w2a, w2b = _rand(2, 6, seed=3), _rand(2, 4, seed=4), _rand(2, 6, seed=5), _rand(2, 4, seed=6)
    adapter = Adapter("loha", {"hada_t1": t1, "hada_w1_a": w1a, "hada_w1_b": w1b, "hada_t2": t2, "hada_w2_a": w2a,
                               "hada_w2_b": w2b}, alpha=3.0)
    expected = _tucker_reference(t1, w1a, w1b) * _tucker_reference(t2, w2a, w2b) * 1.5
    assert _close(adapter.delta((6, 4, 3, 3)), expected, 1e-6)


def test_lokr_delta_is_a_kronecker_product():
    w1, w2a, w2b = _rand(2, 3, seed=1), _rand(4, 2, seed=2), _rand(2, 5, seed=3)
    adapter = Adapter("lokr", {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b}, alpha=1.0)
    assert _close(adapter.delta((8, 15)), _kron_blocks(w1, w2a @ w2b) * 0.5, 1e-6)
    # both factors decomposed; and whole factors, where ComfyUI and LyCORIS take scale 1 whatever alpha says
    w1a, w1b = _rand(2, 1, seed=4), _rand(1, 3, seed=5)
    both = Adapter("lokr", {"lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2_a": w2a, "lokr_w2_b": w2b}, alpha=4.0)
    assert _close(both.delta((8, 15)), _kron_blocks(w1a @ w1b, w2a @ w2b) * 2.0, 1e-6)
    whole = Adapter("lokr", {"lokr_w1": w1, "lokr_w2": w2a @ w2b}, alpha=8.0)
    assert _close(whole.delta((8, 15)), _kron_blocks(w1, w2a @ w2b), 1e-6)


def test_lokr_conv_tucker_delta():
    w1, t2 = _rand(2, 2, seed=1), _rand(2, 2, 3, 3, seed=2)
    w2a, w2b = _rand(2, 3, seed=3), _rand(2, 4, seed=4)
    adapter = Adapter("lokr", {"lokr_w1": w1, "lokr_t2": t2, "lokr_w2_a": w2a, "lokr_w2_b": w2b}, alpha=1.0)
    w2 = _tucker_reference(t2, w2a, w2b)  # (3, 4, 3, 3)
    expected = torch.stack([torch.stack([_kron_blocks(w1, w2[:, :, k, l]) for l in range(3)], -1)
                            for k in range(3)], -2) * 0.5
    assert _close(adapter.delta((6, 8, 3, 3)), expected, 1e-6)


# ---- files in pipelines ------------------------------------------------------------------------
def _peft_model(unet, config, seed):
    """A copy of `unet` with a peft adapter whose every weight is random (peft zero-inits one factor)."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(config, copy.deepcopy(unet))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(t in name for t in ("hada_", "lokr_", "lora_A", "lora_B")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def _kohya_file(path, peft_sd, family, alpha, scale_whole_lokr=None):
    """peft's LoHa/LoKr keys under kohya module names, with alpha (what the trainer will write)."""
    tensors = {}
    for key, value in peft_sd.items():
        module, _, suffix = key.rpartition(".")
        name = kohya_keys.diffusers_to_kohya("unet", module, family)
        tensors[f"{name}.{suffix}"] = value.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    if scale_whole_lokr is not None:  # peft scales every LoKr by alpha/r; ComfyUI a module with whole factors by 1
        for key in [k for k in tensors if k.endswith(".lokr_w2")]:
            name = key.rpartition(".")[0]
            if f"{name}.lokr_w1_a" not in tensors:
                tensors[key] = tensors[key] * scale_whole_lokr
    save_file(tensors, path)
    return path


@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_loha_file_equals_peft_loha_and_weight_zero_is_the_base(pipe_of, unet_out, tmp_path, family):
    from peft import LoHaConfig, get_peft_model_state_dict

    pipe = pipe_of(family)
    base = unet_out(pipe.unet)
    peft_unet = _peft_model(pipe.unet, LoHaConfig(r=2, alpha=3, target_modules=ATTENTION + CONV,
                                                  use_effective_conv2d=True), seed=1)
    path = _kohya_file(tmp_path / "loha.safetensors", get_peft_model_state_dict(peft_unet), family, 3)
    lora = read_lora(path)
    assert lora.format == "lycoris" and {a.kind for a in lora.adapters.values()} == {"loha"}
    assert any("hada_t1" in a.tensors for a in lora.adapters.values())  # the Tucker variant is in there
    apply_loras(pipe, [(path, 0.0)], family)
    assert torch.equal(unet_out(pipe.unet), base)
    apply_loras(pipe, [(path, 1.0)], family)
    assert _close(unet_out(pipe.unet), unet_out(peft_unet))
    remove_loras(pipe)
    assert torch.equal(unet_out(pipe.unet), base)


@pytest.mark.parametrize("decompose_both", [False, True])
def test_lokr_file_equals_peft_lokr(pipe_of, unet_out, tmp_path, decompose_both):
    from peft import LoKrConfig, get_peft_model_state_dict

    pipe = pipe_of("sdxl")
    base = unet_out(pipe.unet)
    rank, alpha = 2, 3
    peft_unet = _peft_model(pipe.unet, LoKrConfig(r=rank, alpha=alpha, target_modules=ATTENTION + CONV,
                                                  decompose_both=decompose_both, use_effective_conv2d=True), seed=2)
    sd = get_peft_model_state_dict(peft_unet)
    path = _kohya_file(tmp_path / "lokr.safetensors", sd, "sdxl", alpha, scale_whole_lokr=alpha / rank)
    assert any(k.endswith("lokr_w2") for k in sd) and any(k.endswith("lokr_w2_a") for k in sd)  # both kinds
    apply_loras(pipe, [(path, 0.0)], "sdxl")
    assert torch.equal(unet_out(pipe.unet), base)
    apply_loras(pipe, [(path, 1.0)], "sdxl")
    assert _close(unet_out(pipe.unet), unet_out(peft_unet))


@pytest.mark.parametrize("fmt", ["diffusers", "peft"])
def test_peft_dora_file_equals_peft_dora(pipe_of, unet_out, tmp_path, fmt):
    from peft import LoraConfig, get_peft_model_state_dict
    import json

    pipe = pipe_of("sd15")
    base = unet_out(pipe.unet)
    peft_unet = _peft_model(pipe.unet, LoraConfig(r=4, lora_alpha=2, target_modules=ATTENTION + CONV,
                                                  use_dora=True), seed=3)
    sd = get_peft_model_state_dict(peft_unet)
    assert any("lora_magnitude_vector" in k for k in sd)
    config = {"r": 4, "lora_alpha": 2, "use_dora": True, "target_modules": ATTENTION + CONV}
    if fmt == "diffusers":
        sd = {f"unet.{k}": v for k, v in sd.items()}
        config = {f"unet.{k}": v for k, v in config.items()}
    save_file(sd, tmp_path / "dora.safetensors", metadata={"lora_adapter_metadata": json.dumps(config)})
    apply_loras(pipe, [(tmp_path / "dora.safetensors", 0.0)], "sd15")
    assert torch.equal(unet_out(pipe.unet), base)
    apply_loras(pipe, [(tmp_path / "dora.safetensors", 1.0)], "sd15")
    assert _close(unet_out(pipe.unet), unet_out(peft_unet), 1e-4)


def _first_module(unet, kind):
    for name, module in unet.named_modules():
        if name.endswith(kind):
            return name, module
    raise AssertionError(kind)


def _merged_output(unet, unet_out, name, new_weight, new_bias=None):
    model = copy.deepcopy(unet)
    module = dict(model.named_modules())[name]
    with torch.no_grad():
        module.weight.copy_(new_weight)
        if new_bias is not None:
            module.bias.copy_(new_bias)
    return unet_out(model)


def test_kohya_dora_locon_tucker_and_full_diff_against_formulas(pipe_of, unet_out, tmp_path):
    """One file, three modules: DoRA on an attention projection (dora_scale per input column, kohya
    layout), a Tucker LoCon on a 3x3 conv, a full diff with a bias diff on another projection."""
    pipe = pipe_of("sd15")
    unet = pipe.unet
    q_name, q = _first_module(unet, "attn1.to_q")
    c_name, conv = _first_module(unet, "resnets.0.conv1")
    v_name, v = _first_module(unet, "attn2.to_out.0")
    k = {n: kohya_keys.diffusers_to_kohya("unet", n, "sd15") for n in (q_name, c_name, v_name)}
    W, C, V = q.weight.detach(), conv.weight.detach(), v.weight.detach()
    down, up, m = _rand(4, W.shape[1], seed=1), _rand(W.shape[0], 4, seed=2), _rand(1, W.shape[1], seed=3) + 1.0
    cd, cu, cm = _rand(2, C.shape[1], 1, 1, seed=4), _rand(C.shape[0], 2, 1, 1, seed=5), _rand(2, 2, 3, 3, seed=6)
    diff, diff_b = _rand(*V.shape, seed=7, scale=0.05), _rand(V.shape[0], seed=8)
    tensors = {f"{k[q_name]}.lora_down.weight": down, f"{k[q_name]}.lora_up.weight": up,
               f"{k[q_name]}.alpha": torch.tensor(2.0), f"{k[q_name]}.dora_scale": m,
               f"{k[c_name]}.lora_down.weight": cd, f"{k[c_name]}.lora_up.weight": cu,
               f"{k[c_name]}.lora_mid.weight": cm, f"{k[c_name]}.alpha": torch.tensor(1.0),
               f"{k[v_name]}.diff": diff, f"{k[v_name]}.diff_b": diff_b}
    save_file(tensors, tmp_path / "mixed.safetensors")
    base = unet_out(unet)

    merged_q = W + 0.5 * up @ down  # DoRA: m * V / ||V||, column norms (kohya's wd_on_out=False)
    dora_q = m * merged_q / merged_q.norm(dim=0, keepdim=True)
    tucker = torch.einsum("ijkl,pi,jq->pqkl", cm, cu.flatten(1), cd.flatten(1)) * 0.5
    for weight in (1.0, 0.6):
        apply_loras(pipe, [(tmp_path / "mixed.safetensors", weight)], "sd15")
        out = unet_out(unet)
        remove_loras(pipe)
        model = copy.deepcopy(unet)
        mods = dict(model.named_modules())
        with torch.no_grad():
            mods[q_name].weight.copy_(W + weight * (dora_q - W))
            mods[c_name].weight.add_(weight * tucker)
            mods[v_name].weight.add_(weight * diff)
            mods[v_name].bias.add_(weight * diff_b)
        assert _close(out, unet_out(model))
    apply_loras(pipe, [(tmp_path / "mixed.safetensors", 0.0)], "sd15")
    assert torch.equal(unet_out(unet), base)


def test_lycoris_and_plain_lora_together_and_reapplying_does_not_accumulate(pipe_of, trained, unet_out, merged,
                                                                           tmp_path):
    from peft import LoHaConfig, get_peft_model_state_dict

    from loraflow.models.lora.save import save_lora

    pipe = pipe_of("sd15")
    loha_unet = _peft_model(pipe.unet, LoHaConfig(r=2, alpha=2, target_modules=ATTENTION), seed=4)
    loha = _kohya_file(tmp_path / "loha.safetensors", get_peft_model_state_dict(loha_unet), "sd15", 2)
    _, _, unet_sd, _ = trained(pipe, rank=4, alpha=4, seed=5)
    plain = save_lora(tmp_path / "plain.safetensors", unet_sd, family="sd15", rank=4, alpha=4, dtype=torch.float32)
    apply_loras(pipe, [(loha, 1.0), (plain, 0.5)], "sd15")
    apply_loras(pipe, [(loha, 1.0), (plain, 0.5)], "sd15")  # again: from the base, not on top
    out = unet_out(pipe.unet)
    expected = unet_out(merged(loha_unet, [(read_lora(plain), "unet", 0.5)]))
    assert _close(out, expected)


def test_unknown_adapter_type_is_one_line_naming_the_key_pattern(tmp_path):
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.oft_blocks": torch.zeros(2, 2, 2), f"{name}.alpha": torch.tensor(1.0)},
              tmp_path / "oft.safetensors")
    with pytest.raises(InputError, match=r"unsupported LoRA adapter type: key '.*proj_in\.oft_blocks' "
                                         r"\(pattern '<module>\.oft_blocks'\)") as err:
        read_lora(tmp_path / "oft.safetensors")
    assert "\n" not in str(err.value)


def test_shape_mismatch_is_reported_as_such(pipe_of, tmp_path):
    pipe = pipe_of("sd15")
    name, module = _first_module(pipe.unet, "attn1.to_q")
    key = kohya_keys.diffusers_to_kohya("unet", name, "sd15")
    out_dim, in_dim = module.weight.shape
    save_file({f"{key}.hada_w1_a": torch.zeros(out_dim + 8, 2), f"{key}.hada_w1_b": torch.zeros(2, in_dim),
               f"{key}.hada_w2_a": torch.zeros(out_dim + 8, 2), f"{key}.hada_w2_b": torch.zeros(2, in_dim)},
              tmp_path / "wide.safetensors")
    with pytest.raises(InputError, match=rf"shape mismatch at 'unet\.{name}': the model's weight is "
                                         rf"\({out_dim}, {in_dim}\), the file holds hada_w1_a \({out_dim + 8}, 2\)"):
        apply_loras(pipe, [(tmp_path / "wide.safetensors", 1.0)], "sd15")
    assert not hasattr(module, "_loraflow_base")  # nothing was patched


def test_info_names_the_types_and_convert_refuses_lycoris(tmp_path):
    from loraflow.models.lora.info import format_info
    from loraflow.models.lora.load import convert_lora

    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    save_file({f"{q}.hada_w1_a": _rand(8, 2), f"{q}.hada_w1_b": _rand(2, 8), f"{q}.hada_w2_a": _rand(8, 2),
               f"{q}.hada_w2_b": _rand(2, 8), f"{q}.alpha": torch.tensor(1.0), f"{k}.diff": _rand(8, 8)},
              tmp_path / "mix.safetensors")
    text = format_info(read_lora(tmp_path / "mix.safetensors"))
    assert "format:      lycoris" in text
    assert "loha (1 modules)" in text and "diff (1 modules)" in text
    with pytest.raises(InputError, match="LyCORIS file \\(diff, loha\\)"):
        convert_lora(tmp_path / "mix.safetensors", tmp_path / "out.safetensors", to="diffusers", family="sd15")


def test_generate_takes_a_lycoris_file_by_flag_and_by_prompt_tag(tiny_session, tmp_path):
    """The generation path (CLI, storyboard, server and ComfyUI LoraLoader all go through it)."""
    import numpy as np
    from peft import LoHaConfig, get_peft_model_state_dict

    from loraflow.generate.options import GenerateConfig

    session = tiny_session("sdxl")
    loha_unet = _peft_model(session.pipe.unet, LoHaConfig(r=2, alpha=2, target_modules=ATTENTION), seed=9)
    path = _kohya_file(tmp_path / "lohastyle.safetensors", get_peft_model_state_dict(loha_unet), "sdxl", 2)

    def image(**kw):
        config = dict(model="x", prompt="a red circle", steps=2, height=64, width=64, seed=3, guidance_scale=4.0)
        return np.asarray(session.generate(GenerateConfig(**{**config, **kw}))[0].image, dtype=np.int16)

    base = image()
    assert np.array_equal(image(lora=[f"{path}:0"]), base)
    by_flag = image(lora=[f"{path}:0.8"])
    assert np.abs(by_flag - base).max() > 0
    assert np.array_equal(image(prompt="a red circle <lora:lohastyle:0.8>", lora_dir=[str(tmp_path)]), by_flag)
    assert np.array_equal(image(), base)  # nothing left behind in the shared pipeline
