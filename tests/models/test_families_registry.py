"""A family is one file: no family name outside models/families, detection and options ask the registry."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import loraflow
from loraflow.errors import ConfigError
from loraflow.models.families import FAMILIES, RECOGNISED, TINY_MODELS

SRC = Path(loraflow.__file__).resolve().parent
# The names of issue 13 (and families that may come), plus whatever the registry knows now.
NAMES = {"kolors", "sdxl", "sd15", "flux", "qwen-image", "qwen_image"} | {f.name for f in RECOGNISED}
OWNERS = ("models/families/", "models/configs/")  # where family names may be spelled


def _family_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.name}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.lower().removeprefix("tiny:") in NAMES]


def test_no_family_name_outside_the_families_package():
    files = [p for p in SRC.rglob("*.py") if not p.relative_to(SRC).as_posix().startswith(OWNERS)]
    assert len(files) > 50  # the scan really walked the package
    found = [hit for path in files for hit in _family_literals(path)]
    assert found == [], "ask loraflow.models.families instead of spelling a family: " + "; ".join(found[:10])


def test_the_scan_sees_every_spelling_it_claims_to(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('A = "SDXL"\nB = "tiny:kolors"\nC = "qwen-image"\nD = "a sdxl model"\n', encoding="utf-8")
    assert [hit.split(" ", 1)[1] for hit in _family_literals(planted)] == ["'SDXL'", "'tiny:kolors'", "'qwen-image'"]


def test_families_package_and_options_import_without_torch():
    code = ("import sys, loraflow.models.families, loraflow.models.cli, loraflow.generate.options, "
            "loraflow.train.config, loraflow.models.lora.cli; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- detection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_each_tiny_folder_is_detected_by_its_declarations_and_by_its_unet(tiny_model_dir, tmp_path, family):
    from loraflow.models.loading import detect_folder_family

    folder = tiny_model_dir(family)
    assert detect_folder_family(folder) == family
    bare = tmp_path / "unet-only"  # no model_index.json: the UNet config alone must tell
    (bare / "unet").mkdir(parents=True)
    shutil.copy(folder / "unet" / "config.json", bare / "unet" / "config.json")
    assert detect_folder_family(bare) == family


def test_original_kolors_layout_is_kolors_although_its_index_names_sdxl(tiny_model_dir, tmp_path):
    from loraflow.models.loading import detect_folder_family

    folder = tiny_model_dir("kolors")
    copy = tmp_path / "Kolors"  # Kwai-Kolors/Kolors: StableDiffusionXLPipeline + ChatGLM custom code
    (copy / "text_encoder").mkdir(parents=True)
    index = json.loads((folder / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    shutil.copy(folder / "text_encoder" / "config.json", copy / "text_encoder" / "config.json")
    assert detect_folder_family(copy) == "kolors"
    (copy / "text_encoder" / "config.json").unlink()  # without the ChatGLM config it is what it declares
    assert detect_folder_family(copy) == "sdxl"


@pytest.mark.parametrize("width, outcome", [(768, "sd15"), (2048, "sdxl"), (1024, "SD2.x UNet"), (512, None)])
def test_unet_only_checkpoint_by_cross_attention_width(width, outcome):
    from loraflow.errors import ModelLoadError
    from loraflow.models.single_file import classify_keys

    shapes = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, width)}
    if outcome and outcome.startswith("SD2"):
        with pytest.raises(ModelLoadError, match=r"is a SD2\.x UNet, which is not supported; use SDXL or SD1\.5"):
            classify_keys(shapes, "u.safetensors")
    else:
        assert classify_keys(shapes, "u.safetensors") == outcome


# ---- options and built-in names -----------------------------------------------------------------
OPTIONS = ["loraflow.generate.options:GenerateConfig", "loraflow.train.config:TrainConfig",
           "loraflow.models.lora.cli:ConvertOptions"]  # every Options class with a `family` field


def _options(spec: str):
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("spec", OPTIONS)
def test_options_refuse_an_unknown_family_in_one_line_naming_the_choices(spec):
    options = _options(spec)
    with pytest.raises(ConfigError) as info:
        options.from_dict({"family": "flux"})
    message = str(info.value)
    assert "\n" not in message and "'family'" in message and "'flux'" in message
    assert all(f"'{name}'" in message for name in ("kolors", "sdxl", "sd15"))
    assert options.from_dict({"family": "sd15"}).family == "sd15"


@pytest.mark.parametrize("spec", OPTIONS)
def test_family_flag_offers_the_registered_families(spec):
    import argparse

    parser = argparse.ArgumentParser()
    _options(spec).add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "family")
    assert sorted(action.choices) == sorted(FAMILIES) and {"kolors", "sdxl", "sd15"} <= set(action.choices)


def test_builtin_models_are_one_tiny_model_per_family():
    from loraflow.models.loading import BUILTIN_MODELS, DEMO

    assert sorted(TINY_MODELS) == ["tiny:kolors", "tiny:sd15", "tiny:sdxl"]
    assert BUILTIN_MODELS == (DEMO, *TINY_MODELS)


# ---- family data agrees with the configs it ships ------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_data_matches_its_shipped_configs(family):
    fam = FAMILIES[family]
    vae = json.loads((fam.config_dir().parent / fam.vae_config_folder / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == fam.vae_scaling_factor
    if fam.single_file_layout:
        root = fam.config_dir()
        assert json.loads((root / "model_index.json").read_text())["_class_name"] == fam.pipeline_class_name
        unet = json.loads((root / "unet" / "config.json").read_text())
        assert unet["cross_attention_dim"] == fam.cross_attention_dim
        for component in (*fam.single_file_layout, *fam.single_file_tokenizers):
            assert (root / component).is_dir(), component


def test_kolors_previews_with_sdxl_factors_and_sd15_with_its_own():
    import torch

    from loraflow.serve.preview import latent_to_jpeg

    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    jpeg = {name: latent_to_jpeg(latents, name) for name in ("kolors", "sdxl", "sd15")}
    assert jpeg["kolors"] == jpeg["sdxl"] != jpeg["sd15"]  # Kolors ships SDXL's VAE


def test_lora_metadata_names_recognised_only_families_too():
    from loraflow.models.lora.metadata import family_from_metadata

    assert family_from_metadata({"ss_v2": "True", "ss_base_model_version": "sd_v1"}) == "sd15"  # base wins
    assert family_from_metadata({"ss_v2": "True"}) == "sd2"
    assert family_from_metadata({"modelspec.architecture": "kwai-kolors-v1/lora"}) == "kolors"
    assert family_from_metadata({}) is None
