"""LoRAs in generation: weight 0 is the base model, kohya and diffusers files of the same weights
draw the same image, <lora:name:w> tags equal --lora, several LoRAs combine, hashes in infotext."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from loraflow.errors import ConfigError
from loraflow.generate.infotext import parse_infotext
from loraflow.generate.options import GenerateConfig
from loraflow.generate.session import GenerationSession
from loraflow.models.hashing import lora_hash
from loraflow.models.loading import load_pipeline


def make_lora_files(pipe, family, folder, seed=0, rank=4, alpha=2.0, text=False):
    """A peft LoRA on copies of the pipeline's models (random non-zero lora_B), saved as kohya and diffusers."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from loraflow.models.lora.save import save_lora

    gen = torch.Generator().manual_seed(seed)

    def adapt(model, targets):
        model = copy.deepcopy(model)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
        # transformers 5.24's add_adapter wants peft>=0.22 (not released); peft's own injection works
        model = inject_adapter_in_model(config, model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        return get_peft_model_state_dict(model)

    unet_state = adapt(pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"])
    te_states = {"text_encoder": adapt(pipe.text_encoder, ["q_proj", "v_proj"])} if text else None
    paths = {}
    for fmt in ("kohya", "diffusers"):
        paths[fmt] = folder / f"style{seed}-{fmt}.safetensors"
        save_lora(paths[fmt], unet_state, te_states, family=family, rank=rank, alpha=alpha, fmt=fmt,
                  dtype=torch.float32)
    return paths


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    session = GenerationSession(load_pipeline("tiny:sdxl", device="cpu"))
    folder = tmp_path_factory.mktemp("loras")
    return session, make_lora_files(session.pipe, "sdxl", folder, seed=0), make_lora_files(session.pipe, "sdxl", folder, seed=1)


def image(session, **kw):
    base = dict(model="x", prompt="a red circle", steps=2, height=64, width=64, seed=3, guidance_scale=4.0)
    base.update(kw)
    return np.asarray(session.generate(GenerateConfig(**base))[0].image, dtype=np.int16)


def test_weight_zero_equals_base_and_weight_one_changes(sdxl):
    session, lora, _ = sdxl
    base = image(session)
    assert np.array_equal(image(session, lora=[f"{lora['kohya']}:0"]), base)
    assert np.abs(image(session, lora=[f"{lora['kohya']}:1"]) - base).max() > 0
    assert np.array_equal(image(session), base)  # LoRAs removed again when not asked for


def test_kohya_and_diffusers_files_draw_the_same_image(sdxl):
    session, lora, _ = sdxl
    a = image(session, lora=[str(lora["kohya"])])
    b = image(session, lora=[str(lora["diffusers"])])
    assert np.abs(a - b).max() <= 1


def test_prompt_tag_equals_flag_and_is_searched_in_lora_dirs(sdxl):
    session, lora, _ = sdxl
    by_flag = image(session, lora=[f"{lora['kohya']}:0.5"])
    name = lora["kohya"].stem
    by_tag = image(session, prompt=f"a red circle <lora:{name}:0.5>", lora_dir=[str(lora["kohya"].parent)])
    assert np.array_equal(by_flag, by_tag)
    with pytest.raises(ConfigError, match="LoRA not found: nope"):
        image(session, prompt="x <lora:nope:1>")


def test_two_loras_combine(sdxl):
    session, a, b = sdxl
    only_a = image(session, lora=[str(a["kohya"])])
    both = image(session, lora=[str(a["kohya"]), f"{b['kohya']}:0.7"])
    assert np.abs(both - only_a).max() > 0


def test_infotext_lists_lora_hashes(sdxl):
    session, lora, _ = sdxl
    cfg = GenerateConfig(model="x", prompt="a red circle", steps=1, height=64, width=64, seed=1,
                         lora=[f"{lora['kohya']}:0.8"])
    info = parse_infotext(session.generate(cfg)[0].infotext)
    assert info["Lora hashes"] == {lora["kohya"].stem: lora_hash(lora["kohya"])}
    assert f"<lora:{lora['kohya'].stem}:0.8>" in info["prompt"]


@pytest.mark.parametrize("family", ["sd15", "kolors"])
def test_lora_weight_zero_and_formats_other_families(tmp_path, family):
    session = GenerationSession(load_pipeline(f"tiny:{family}", device="cpu"))
    lora = make_lora_files(session.pipe, family, tmp_path, text=(family == "sd15"))
    base = image(session)
    assert np.array_equal(image(session, lora=[f"{lora['kohya']}:0"]), base)
    changed = image(session, lora=[str(lora["kohya"])])
    assert np.abs(changed - base).max() > 0
    assert np.abs(image(session, lora=[str(lora["diffusers"])]) - changed).max() <= 1
