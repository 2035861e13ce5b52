"""ControlNet in generation, on tiny models and tiny ControlNets built in-process (never downloaded):
scale 0 is no control, scale > 0 steers, several ControlNets add up, the start/end window is
respected (the ControlNet only runs inside it), Kolors' ChatGLM ControlNet runs end to end,
LoRA and ControlNet combine, the infotext records the units as A1111's ControlNet extension."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from loraflow.errors import ConfigError, InputError
from loraflow.generate.control.preprocess import canny, lineart, color_grid, make_control_map
from loraflow.generate.control.tiny import save_tiny_controlnet
from loraflow.generate.control.units import parse_control_arg
from loraflow.generate.infotext import parse_infotext, read_infotext
from loraflow.generate.options import GenerateConfig
from loraflow.generate.session import save_results

FAMILIES = ("sd15", "sdxl", "kolors")


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    """`controlnet_dir("sdxl", seed)` -> a tiny ControlNet folder matching tiny:sdxl (built once)."""
    cache = {}

    def get(family, seed=0):
        if (family, seed) not in cache:
            cache[family, seed] = str(save_tiny_controlnet(family, tmp_path_factory.mktemp(f"cn-{family}-{seed}"), seed))
        return cache[family, seed]

    return get


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """skimage's astronaut at 96x80: not the output size, so it must be fitted."""
    from skimage import data

    path = tmp_path_factory.mktemp("ref") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((96, 80), Image.LANCZOS).save(path)
    return str(path)


def config(family, **kw):
    base = dict(model=f"tiny:{family}", prompt="an astronaut, portrait", steps=4, height=64, width=64,
                seed=3, guidance_scale=4.0)
    base.update(kw)
    return GenerateConfig(**base)


def pixels(result):
    return np.asarray(result.image, dtype=np.int16)


def controlnet_of(session, path):
    return session.derived.controlnet(path)


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_zero_is_no_control_and_scale_one_steers(tiny_session, controlnet_dir, reference, family):
    s = tiny_session(family)
    cn = controlnet_dir(family)
    plain = pixels(s.generate(config(family))[0])
    zero = pixels(s.generate(config(family, control=[f"canny:{reference}:0"], controlnet=[cn]))[0])
    one = pixels(s.generate(config(family, control=[f"canny:{reference}:1"], controlnet=[cn]))[0])
    # the ControlNet pipeline (for Kolors: SDXL's, with ChatGLM embeddings) at scale 0 is the plain one
    assert np.array_equal(plain, zero)
    assert np.abs(plain - one).max() > 10


def test_two_controlnets_both_steer(tiny_session, controlnet_dir, reference):
    s = tiny_session("sdxl")
    a, b = controlnet_dir("sdxl", 0), controlnet_dir("sdxl", 1)
    one = pixels(s.generate(config("sdxl", control=[f"canny:{reference}"], controlnet=[a]))[0])
    both = s.generate(config("sdxl", control=[f"canny:{reference}", f"color:{reference}:0.8"], controlnet=[a, b]))[0]
    second_off = s.generate(config("sdxl", control=[f"canny:{reference}", f"color:{reference}:0"], controlnet=[a, b]))[0]
    assert np.abs(pixels(both) - one).max() > 0
    assert np.array_equal(pixels(second_off), one)
    assert len(both.control_images) == 2 and "ControlNet 1" in both.params


# diffusers' rule (pipeline_controlnet.py, `controlnet_keep`): step i of N runs the ControlNet unless
# i / N < start or (i + 1) / N > end. Written out for N = 4 so the expected steps are plain numbers.
WINDOWS = {(0.0, 1.0): [0, 1, 2, 3], (0.0, 0.5): [0, 1], (0.5, 1.0): [2, 3], (0.25, 0.75): [1, 2], (0.5, 0.75): [2]}


@pytest.mark.parametrize("window", list(WINDOWS), ids=lambda w: f"{w[0]}-{w[1]}")
def test_start_end_window_runs_the_controlnet_on_exactly_its_steps(tiny_session, controlnet_dir, reference, window):
    """Instrumented: which of the 4 denoising steps actually ran the ControlNet network."""
    s = tiny_session("sd15")
    cn = controlnet_dir("sd15")
    s.generate(config("sd15", control=[f"canny:{reference}"], controlnet=[cn]))  # load it
    model = controlnet_of(s, cn)
    step_times, ran_times, current = [], [], {}

    def unet_step(module, args, kwargs):  # one UNet call per step (CFG batches cond + uncond)
        step_times.append(float((args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0]))

    def controlnet_call(module, args, kwargs):
        current["t"] = float((args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0])

    def network_ran(module, args, output):  # conv_in runs only when the network itself runs
        ran_times.append(current["t"])

    hooks = [s.pipe.unet.register_forward_pre_hook(unet_step, with_kwargs=True),
             model.register_forward_pre_hook(controlnet_call, with_kwargs=True),
             model.conv_in.register_forward_hook(network_ran)]
    try:
        s.generate(config("sd15", control=[f"canny:{reference}:1:{window[0]}:{window[1]}"], controlnet=[cn]))
    finally:
        for h in hooks:
            h.remove()
    assert len(step_times) == 4
    assert [i for i, t in enumerate(step_times) if t in ran_times] == WINDOWS[window]
    assert len(ran_times) == len(WINDOWS[window])  # once per step that runs it, never outside


def test_window_changes_the_image(tiny_session, controlnet_dir, reference):
    s = tiny_session("sdxl")
    cn = controlnet_dir("sdxl")
    full = pixels(s.generate(config("sdxl", control=[f"canny:{reference}"], controlnet=[cn]))[0])
    half = pixels(s.generate(config("sdxl", control=[f"canny:{reference}:1:0:0.5"], controlnet=[cn]))[0])
    plain = pixels(s.generate(config("sdxl"))[0])
    assert np.abs(full - half).max() > 0 and np.abs(plain - half).max() > 0


def test_guess_mode_runs_and_is_recorded(tiny_session, controlnet_dir, reference):
    s = tiny_session("sdxl")
    r = s.generate(config("sdxl", control=[f"canny:{reference}"], controlnet=[controlnet_dir("sdxl")], guess_mode=True))[0]
    assert "Control Mode: ControlNet is more important" in r.params["ControlNet 0"]


def test_kolors_controlnet_projects_chatglm_states(tiny_session, controlnet_dir, reference):
    s = tiny_session("kolors")
    cn = controlnet_dir("kolors")
    s.generate(config("kolors", control=[f"canny:{reference}"], controlnet=[cn]))
    model = controlnet_of(s, cn)
    assert model.config.encoder_hid_dim_type == "text_proj"
    # ChatGLM states (32-d in the tiny model) reach cross-attention (64-d) only through text_proj
    assert model.encoder_hid_proj.in_features == s.pipe.text_encoder.config.hidden_size
    assert model.encoder_hid_proj.out_features == model.config.cross_attention_dim


def test_lora_and_controlnet_together(tiny_session, controlnet_dir, reference, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from loraflow.models.lora.save import save_lora

    s = tiny_session("sdxl")
    unet = __import__("copy").deepcopy(s.pipe.unet)
    unet = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]), unet)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    lora = tmp_path / "style.safetensors"
    save_lora(lora, get_peft_model_state_dict(unet), None, family="sdxl", rank=4, alpha=4.0, fmt="kohya",
              dtype=torch.float32)
    cn = controlnet_dir("sdxl")
    control = pixels(s.generate(config("sdxl", control=[f"canny:{reference}"], controlnet=[cn]))[0])
    zero = pixels(s.generate(config("sdxl", control=[f"canny:{reference}"], controlnet=[cn], lora=[f"{lora}:0"]))[0])
    both = s.generate(config("sdxl", control=[f"canny:{reference}"], controlnet=[cn], lora=[f"{lora}:1"]))[0]
    assert np.abs(zero - control).max() <= 1
    assert np.abs(pixels(both) - control).max() > 0
    info = parse_infotext(both.infotext)
    assert "style" in info["Lora hashes"] and info["ControlNet 0"].startswith("Module: canny")


def test_infotext_and_saved_control_map(tiny_session, controlnet_dir, reference, tmp_path, caplog):
    s = tiny_session("sd15")
    cn = controlnet_dir("sd15")
    with caplog.at_level(logging.WARNING, logger="loraflow"):
        results = s.generate(config("sd15", control=[f"canny:{reference}:0.8:0.1:0.9"], controlnet=[cn],
                                    canny_low_threshold=50, canny_high_threshold=150))
    assert "is 96x80, resized to 64x64 (Crop and Resize)" in caplog.text
    [path] = save_results(results, tmp_path)
    saved = path.with_name(f"{path.stem}.control0.png")
    assert saved.is_file() and Image.open(saved).size == (64, 64)
    info = parse_infotext(read_infotext(path))
    unit = info["ControlNet 0"]
    assert unit.startswith(f"Module: canny, Model: {cn.rsplit('/', 1)[-1]} [")
    for part in ("Weight: 0.8", "Resize Mode: Crop and Resize", "Low Vram: False", "Threshold A: 50",
                 "Threshold B: 150", "Guidance Start: 0.1", "Guidance End: 0.9", "Control Mode: Balanced"):
        assert part in unit


def test_canny_matches_opencv():
    import cv2
    from skimage import data

    image = data.astronaut()
    ours = canny(image, 100, 200)
    assert ours.shape == image.shape
    assert np.array_equal(ours[:, :, 0], cv2.Canny(image, 100, 200))
    assert np.array_equal(ours[:, :, 0], ours[:, :, 2])


def test_other_builtin_preprocessors():
    from skimage import data

    image = data.astronaut()  # 512x512
    lines = lineart(image)
    assert lines.shape == image.shape and lines.max() > 100 and np.median(lines) < 20  # white lines on black
    palette = color_grid(image)
    assert len(np.unique(palette.reshape(-1, 3), axis=0)) <= 64  # an 8x8 grid of flat colours


def test_control_map_is_fitted_crop_and_resize(tmp_path):
    Image.new("RGB", (128, 64), "white").save(tmp_path / "wide.png")
    out = make_control_map("raw", str(tmp_path / "wide.png"), 32, 32, "control 0")
    assert out.size == (32, 32)


def test_missing_or_corrupt_control_image_is_one_line_error(tiny_session, controlnet_dir, tmp_path):
    s = tiny_session("sd15")
    cn = controlnet_dir("sd15")
    with pytest.raises(InputError, match="control 0 \\(canny\\): image not found: .*nope.png"):
        s.generate(config("sd15", control=[f"canny:{tmp_path}/nope.png"], controlnet=[cn]))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="cannot read image") as err:
        s.generate(config("sd15", control=[f"canny:{bad}"], controlnet=[cn]))
    assert "\n" not in str(err.value)


def test_bad_control_arguments():
    assert parse_control_arg("pose:C:\\refs\\p.png:0.5").image == "C:\\refs\\p.png"
    unit = parse_control_arg("depth:d.png:0.6:0.2:0.7")
    assert (unit.type, unit.image, unit.scale, unit.start, unit.end) == ("depth", "d.png", 0.6, 0.2, 0.7)
    with pytest.raises(ConfigError, match="TYPE:IMAGE"):
        parse_control_arg("canny")
    with pytest.raises(ConfigError, match="two numbers"):
        parse_control_arg("canny:a.png:1:0")
    with pytest.raises(ConfigError, match="type"):
        GenerateConfig.from_dict({"prompt": "x", "control": ["blur:a.png"]})
    with pytest.raises(ConfigError, match="start"):
        GenerateConfig.from_dict({"prompt": "x", "control": ["canny:a.png:1:0.8:0.2"]})
    with pytest.raises(ConfigError, match="one per control"):
        GenerateConfig.from_dict({"prompt": "x", "control": ["canny:a.png"], "controlnet": ["a", "b"]})


def test_control_without_weights_or_with_missing_weights(tiny_session, reference, tmp_path):
    from loraflow.errors import ModelLoadError

    s = tiny_session("sd15")
    with pytest.raises(ConfigError, match="no ControlNet weights: pass --controlnet"):
        s.generate(config("sd15", control=[f"canny:{reference}"]))
    with pytest.raises(ModelLoadError, match="ControlNet not found"):
        s.generate(config("sd15", control=[f"canny:{reference}"], controlnet=[str(tmp_path / "none")]))


def test_single_safetensors_controlnet_equals_its_folder(tiny_session, controlnet_dir, reference, tmp_path):
    import shutil

    s = tiny_session("sd15")
    folder = controlnet_dir("sd15")
    single = tmp_path / "cn-sd15.safetensors"
    shutil.copy(f"{folder}/diffusion_pytorch_model.safetensors", single)  # no config: the UNet's layout
    a = pixels(s.generate(config("sd15", control=[f"canny:{reference}"], controlnet=[folder]))[0])
    b = pixels(s.generate(config("sd15", control=[f"canny:{reference}"], controlnet=[str(single)]))[0])
    assert np.array_equal(a, b)


def test_cli_generate_with_control(controlnet_dir, reference, tmp_path, capsys):
    from loraflow.cli import main

    cn = controlnet_dir("sd15")
    out = tmp_path / "out"
    code = main(["generate", "--model", "tiny:sd15", "--prompt", "a cat", "--steps", "2", "--height", "64",
                 "--width", "64", "--seed", "5", "--control", f"canny:{reference}:0.7", "--controlnet", cn,
                 "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000-5.control0.png", "00000-5.png"]
    assert "Weight: 0.7" in parse_infotext(read_infotext(out / "00000-5.png"))["ControlNet 0"]
