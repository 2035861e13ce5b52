"""LoRA files in pipelines: what a file does equals what the trained peft model does, through
diffusers' own loader and through ours; alpha, weights, several LoRAs, removal, wrong families."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from loraflow.errors import InputError
from loraflow.models.lora.apply import apply_loras, remove_loras
from loraflow.models.lora.load import read_lora
from loraflow.models.lora.save import save_lora

from lora_helpers import WIDE  # noqa: E402

TOL = 1e-5


def _close(a, b):
    return (a - b).abs().max().item() <= TOL


@pytest.mark.parametrize("family,fmt", [("sdxl", "kohya"), ("sd15", "kohya"), ("sdxl", "diffusers")])
def test_our_file_in_diffusers_own_loader_equals_trained_model(pipe_of, trained, unet_out, text_out, tmp_path,
                                                               family, fmt):
    """Our kohya names (SGM for SDXL; resnets, samplers, text encoders included) read by diffusers' converter."""
    pipe = pipe_of(family)
    peft_unet, peft_tes, unet_sd, te_sds = trained(pipe, rank=4, alpha=2, unet_targets=WIDE, text=True)
    path = save_lora(tmp_path / "k.safetensors", unet_sd, te_sds, family=family, rank=4, alpha=2, fmt=fmt,
                     dtype=torch.float32)
    expected = unet_out(peft_unet)
    if family == "sd15":
        assert not _close(expected, unet_out(pipe.unet))  # the LoRA does something
    pipe.load_lora_weights(str(path))
    assert _close(unet_out(pipe.unet), expected)
    for name, peft_te in peft_tes.items():
        assert _close(text_out(getattr(pipe, name)), text_out(peft_te))


@pytest.mark.parametrize("family", ["sdxl", "sd15", "kolors"])
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_our_loader_equals_trained_model_unet_and_text_encoders(pipe_of, trained, unet_out, text_out, tmp_path,
                                                               family, fmt):
    pipe = pipe_of(family)
    # alpha != rank: the text encoders' scale must come from the file too
    peft_unet, peft_tes, unet_sd, te_sds = trained(pipe, rank=4, alpha=2, text=family != "kolors")
    path = save_lora(tmp_path / "a.safetensors", unet_sd, te_sds, family=family, rank=4, alpha=2,
                     fmt=fmt, dtype=torch.float32)
    apply_loras(pipe, [(path, 1.0)], family)
    assert _close(unet_out(pipe.unet), unet_out(peft_unet))
    for name, peft_te in peft_tes.items():
        assert _close(text_out(getattr(pipe, name)), text_out(peft_te))


def test_kohya_and_diffusers_files_give_the_same_output(pipe_of, trained, unet_out, tmp_path):
    pipe = pipe_of("sd15")
    _, _, unet_sd, _ = trained(pipe, rank=4, alpha=2)
    outs = []
    for fmt in ("kohya", "diffusers"):
        path = save_lora(tmp_path / f"{fmt}.safetensors", unet_sd, family="sd15", rank=4, alpha=2, fmt=fmt)
        apply_loras(pipe, [(path, 1.0)], "sd15")
        outs.append(unet_out(pipe.unet))
        remove_loras(pipe)
        pipe.load_lora_weights(str(path))  # diffusers reads the alpha of both layouts too
        outs.append(unet_out(pipe.unet))
        remove_loras(pipe)
    assert all(torch.equal(outs[0], o) or _close(outs[0], o) for o in outs[1:])


def test_alpha_from_the_file_sets_the_scale(pipe_of, trained, unet_out, merged, tmp_path):
    """Trained with alpha 2 at rank 4: scale 0.5, whatever alpha the caller might think of."""
    pipe = pipe_of("sd15")
    peft_unet, _, unet_sd, _ = trained(pipe, rank=4, alpha=2, unet_targets=WIDE)
    path = save_lora(tmp_path / "a.safetensors", unet_sd, family="sd15", rank=4, alpha=2, dtype=torch.float32)
    lora = read_lora(path)
    assert {a for _, a in lora.modules().values()} == {2.0}
    apply_loras(pipe, [(path, 1.0)], "sd15")
    out = unet_out(pipe.unet)
    remove_loras(pipe)
    assert _close(out, unet_out(peft_unet))
    assert _close(out, unet_out(merged(pipe.unet, [(lora, "unet", 1.0)])))  # W + 0.5 * B @ A, by hand
    assert not _close(out, unet_out(merged(pipe.unet, [(lora, "unet", 2.0)])))  # i.e. not alpha = rank


def test_weight_zero_is_the_base_model_and_removal_restores_it(pipe_of, trained, unet_out, text_out, tmp_path):
    pipe = pipe_of("sd15")
    base, base_text = unet_out(pipe.unet), text_out(pipe.text_encoder)
    _, _, unet_sd, te_sds = trained(pipe, text=True)
    path = save_lora(tmp_path / "a.safetensors", unet_sd, te_sds, family="sd15", rank=4, alpha=4)
    apply_loras(pipe, [(path, 0.0)], "sd15")
    assert _close(unet_out(pipe.unet), base) and _close(text_out(pipe.text_encoder), base_text)
    apply_loras(pipe, [(path, 1.0)], "sd15")
    assert not _close(unet_out(pipe.unet), base)
    remove_loras(pipe)
    assert torch.equal(unet_out(pipe.unet), base) and torch.equal(text_out(pipe.text_encoder), base_text)
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())


def test_two_loras_with_weights_add_up(pipe_of, trained, unet_out, text_out, merged, tmp_path):
    pipe = pipe_of("sd15")
    _, _, sd1, te1 = trained(pipe, rank=4, alpha=4, seed=1, text=True)
    _, _, sd2, _ = trained(pipe, rank=2, alpha=1, seed=2, unet_targets=WIDE)
    p1 = save_lora(tmp_path / "one.safetensors", sd1, te1, family="sd15", rank=4, alpha=4, dtype=torch.float32)
    p2 = save_lora(tmp_path / "two.safetensors", sd2, family="sd15", rank=2, alpha=1, fmt="diffusers",
                   dtype=torch.float32)
    names = apply_loras(pipe, [(p1, 0.7), (p2, -0.4)], "sd15")
    assert len(set(names)) == 2
    out, text = unet_out(pipe.unet), text_out(pipe.text_encoder)
    remove_loras(pipe)
    l1, l2 = read_lora(p1), read_lora(p2)
    assert _close(out, unet_out(merged(pipe.unet, [(l1, "unet", 0.7), (l2, "unet", -0.4)])))
    assert _close(text, text_out(merged(pipe.text_encoder, [(l1, "text_encoder", 0.7)])))
    # the pipeline is reusable: the second LoRA alone, full weight
    expected = unet_out(merged(pipe.unet, [(l2, "unet", 1.0)]))
    apply_loras(pipe, [(p2, 1.0)], "sd15")
    assert _close(unet_out(pipe.unet), expected)


def test_lora_for_another_family_is_a_one_line_error(pipe_of, trained, tmp_path):
    sd15 = pipe_of("sd15")
    _, _, unet_sd, _ = trained(sd15)
    path = save_lora(tmp_path / "sd15-style.safetensors", unet_sd, family="sd15", rank=4, alpha=4)
    sdxl = pipe_of("sdxl")
    with pytest.raises(InputError, match=r"sd15-style.safetensors appears to be a SD1.5 LoRA"):
        apply_loras(sdxl, [(path, 1.0)], "sdxl")
    # without metadata the key names still tell (SD1.5's first down block has attention, SDXL's not)
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(path), bare)
    with pytest.raises(InputError, match="appears to be a SD1.5 LoRA"):
        apply_loras(sdxl, [(bare, 1.0)], "sdxl")
    assert not any("lora" in n for n, _ in sdxl.unet.named_parameters())  # nothing half-loaded


def test_keys_that_match_no_module_are_named(pipe_of, trained, tmp_path):
    pipe = pipe_of("sdxl")
    _, _, unet_sd, _ = trained(pipe)
    path = save_lora(tmp_path / "a.safetensors", unet_sd, family="sdxl", rank=4, alpha=4)
    tensors = load_file(path)
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    for suffix in ("lora_down.weight", "lora_up.weight", "alpha"):
        tensors[f"lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q.{suffix}"] = tensors[f"{name}.{suffix}"].clone()
    save_file(tensors, tmp_path / "extra.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(InputError, match=r"1 of \d+ LoRA modules match no module.*transformer_blocks\.7\.attn1\.to_q"):
        apply_loras(pipe, [(tmp_path / "extra.safetensors", 1.0)], "sdxl")


def test_kolors_refuses_clip_text_encoder_weights(pipe_of, trained, tmp_path):
    _, _, unet_sd, te_sds = trained(pipe_of("sdxl"), text=True)
    path = save_lora(tmp_path / "sdxl.safetensors", unet_sd, te_sds, family="sdxl", rank=4, alpha=4)
    tensors = load_file(path)
    save_file(tensors, tmp_path / "nometa.safetensors")
    kolors = pipe_of("kolors")
    with pytest.raises(InputError, match="appears to be a SDXL LoRA"):
        apply_loras(kolors, [(path, 1.0)], "kolors")
    with pytest.raises(InputError, match="Kolors' text encoder is ChatGLM"):
        apply_loras(kolors, [(tmp_path / "nometa.safetensors", 1.0)], "kolors")


def test_kolors_pipeline_generates_with_a_lora(pipe_of, trained, tmp_path):
    pipe = pipe_of("kolors")
    _, _, unet_sd, _ = trained(pipe)
    path = save_lora(tmp_path / "k.safetensors", unet_sd, family="kolors", rank=4, alpha=4)
    assert read_lora(path).metadata["ss_base_model_version"] == "kolors"

    def image():
        return pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    base = image()
    apply_loras(pipe, [(path, 1.0)], "kolors")
    with_lora = image()
    assert with_lora.shape == base.shape == (1, 64, 64, 3)
    assert not (with_lora == base).all()
