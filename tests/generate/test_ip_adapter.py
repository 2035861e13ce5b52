"""Reference images through an IP-Adapter, on tiny models with tiny random adapters and image encoders
(models/tiny_ip_adapter.py) in each family's hub layout."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loraflow.errors import ConfigError, ModelLoadError
from loraflow.generate.infotext import parse_infotext
from loraflow.generate.options import GenerateConfig
from loraflow.models.families import get_family
from loraflow.models.ip_adapter import locate_ip_adapter
from loraflow.models.tiny_ip_adapter import save_tiny_ip_adapter

BASE = dict(prompt="a red fox in the snow", negative_prompt="blurry", seed=7, num_inference_steps=2,
            height=64, width=64, guidance_scale=5.0)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """`adapters(family, plus)` -> a folder holding a tiny adapter and its encoder (built once)."""
    cache = {}

    def get(family: str, plus: bool = False):
        if (family, plus) not in cache:
            cache[family, plus] = save_tiny_ip_adapter(family, tmp_path_factory.mktemp(f"ipa-{family}-{plus}"), plus=plus)
        return cache[family, plus]

    return get


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Two reference images (random noise of different seeds) and a left-half mask, 48x48 px."""
    folder = tmp_path_factory.mktemp("refs")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        pixels = (np.random.RandomState(seed).rand(48, 48, 3) * 255).astype(np.uint8)
        out[name] = str(folder / f"{name}.png")
        Image.fromarray(pixels).save(out[name])
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    out["left"] = str(folder / "left.png")
    Image.fromarray(left).save(out["left"])
    return out


def draw(session, **kw) -> np.ndarray:
    result = session.generate(GenerateConfig(**{**BASE, **kw}))[0]
    return np.asarray(result.image, dtype=np.float64), result


@pytest.mark.parametrize("family,plus", [("sdxl", False), ("sdxl", True), ("kolors", True), ("sd15", False)])
def test_scale_zero_is_the_base_model_and_a_scale_changes_the_image(tiny_session, adapters, refs, family, plus):
    session = tiny_session(family)
    base, _ = draw(session)
    steered, _ = draw(session, ip_adapter=str(adapters(family, plus)), reference=[f"{refs['a']}:0.8"])
    assert np.abs(steered - base).mean() > 1.0  # 0-255 scale: the adapter moves the picture
    assert session.ip_adapter.attached is not None
    # after an attached adapter, scale 0 detaches it: the base model's bytes exactly (the Kolors text
    # projection that diffusers' unload leaves behind included)
    zero, _ = draw(session, ip_adapter=str(adapters(family, plus)), reference=[f"{refs['a']}:0"])
    assert session.ip_adapter.attached is None
    assert np.array_equal(zero, base)
    again, _ = draw(session, ip_adapter=str(adapters(family, plus)), reference=[f"{refs['a']}:0.8"])
    assert np.array_equal(again, steered)  # reattached from the kept weights: the same image


def test_same_reference_same_image_other_reference_other_image(tiny_session, adapters, refs):
    session = tiny_session("sdxl")
    ipa = str(adapters("sdxl"))
    a1, _ = draw(session, ip_adapter=ipa, reference=[refs["a"]])
    a2, _ = draw(session, ip_adapter=ipa, reference=[refs["a"]])
    b, _ = draw(session, ip_adapter=ipa, reference=[refs["b"]])
    assert np.array_equal(a1, a2)
    assert np.abs(a1 - b).mean() > 1.0


def test_steering_grows_with_the_scale(tiny_session, adapters, refs):
    """The adapter adds scale * (its attention output) to each attn2 output, so a larger scale moves
    the picture further from the base image (checked on 0.25 < 1 < 2)."""
    session = tiny_session("sdxl")
    ipa = str(adapters("sdxl"))
    base, _ = draw(session)
    moves = [np.abs(draw(session, ip_adapter=ipa, reference=[f"{refs['a']}:{s}"])[0] - base).mean() for s in (0.25, 1, 2)]
    assert moves[0] < moves[1] < moves[2]


def test_a_batch_equals_its_images_one_by_one(tiny_session, adapters, refs):
    session = tiny_session("sdxl")
    kw = dict(ip_adapter=str(adapters("sdxl")), reference=[f"{refs['a']}:0.7"])
    batch = session.generate(GenerateConfig(**BASE, num_images=2, batch_size=2, **kw))
    single = session.generate(GenerateConfig(**{**BASE, "seed": BASE["seed"] + 1}, **kw))[0]
    assert np.abs(np.asarray(batch[1].image, float) - np.asarray(single.image, float)).max() <= 1


@pytest.mark.parametrize("batch", [1, 3])
def test_each_image_of_a_batch_gets_one_copy_of_the_reference_embeds(tiny_session, adapters, refs, batch):
    """The UNet sees one row of image embeddings per image and guidance half: 2 * batch under CFG.
    diffusers' pipelines repeat `ip_adapter_image_embeds` by their own batch, so embeddings already
    made for the batch would come out batch² times (the same picture by luck: every row is a copy,
    and attention over duplicated keys is unchanged, but each image attends over batch times the tokens)."""
    session = tiny_session("sdxl")
    rows = []
    hook = session.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["added_cond_kwargs"]["image_embeds"][0].shape[0]),
        with_kwargs=True)
    try:
        session.generate(GenerateConfig(**{**BASE, "num_inference_steps": 1}, num_images=batch, batch_size=batch,
                                        ip_adapter=str(adapters("sdxl")), reference=[f"{refs['a']}:0.7"]))
    finally:
        hook.remove()
    assert rows == [2 * batch]


def _first_attn2_output(session, **kw):
    """The first cross-attention's output (2B, h*w, C) in the first UNet call. Nothing before it
    depends on the adapter, so its change from the base run is the adapter's own term."""
    unet = session.pipe.unet
    name, attn2 = next((n, m) for n, m in unet.named_modules() if n.endswith("attn2"))
    seen = []
    hook = attn2.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    try:
        draw(session, **{**kw, "num_inference_steps": 1, "height": 128, "width": 128})
    finally:
        hook.remove()
    return seen[0]


def test_a_mask_confines_the_reference(tiny_session, adapters, refs, tmp_path):
    """A reference masked to the left half acts only there: in the first cross-attention (an 8x8 grid
    at 128 px) the adapter's term is 0 in the right four columns, bound 0, since diffusers multiplies
    it by the mask bicubically resized to the grid and a half-image step lands between cells 3 and 4
    (measured: 0.0 right, 0.41 left, 0.38 on the right without the mask). Later layers spread it
    (self-attention sees the whole image; on this random tiny UNet the decoded right half still moves
    21 of 255 against 23 unmasked), so the bound is stated where the mask acts."""
    session = tiny_session("sdxl")
    ipa = str(adapters("sdxl"))
    left = np.zeros((128, 128), np.uint8)
    left[:, :64] = 255
    Image.fromarray(left).save(tmp_path / "left128.png")
    base = _first_attn2_output(session)
    masked = _first_attn2_output(session, ip_adapter=ipa, reference=[{"image": refs["a"], "mask": str(tmp_path / "left128.png")}])
    whole = _first_attn2_output(session, ip_adapter=ipa, reference=[refs["a"]])
    grid = lambda out: (out - base).abs().reshape(out.shape[0], 8, 8, -1)  # noqa: E731  (2B, rows, cols, C)
    assert grid(masked)[:, :, 4:].max().item() == 0.0
    assert grid(masked)[:, :, :4].mean().item() > 0.1
    assert grid(whole)[:, :, 4:].mean().item() > 0.1  # unmasked, the same reference does act on the right


def test_infotext_records_the_adapter_and_references_and_parses_back(tiny_session, adapters, refs):
    session = tiny_session("sdxl")
    folder = adapters("sdxl")
    _, result = draw(session, ip_adapter=str(folder),
                     reference=[f"{refs['a']}:0.6", {"image": refs["b"], "scale": 0.3, "mask": refs["left"]}])
    weights = locate_ip_adapter(folder, get_family("sdxl")).weights
    from loraflow.models.hashing import legacy_model_hash

    label = f"{weights.stem} [{legacy_model_hash(weights)}]"
    fields = parse_infotext(result.infotext)
    assert fields["IP-Adapter 0"] == f"Model: {label}, Image: a.png, Weight: 0.6"
    assert fields["IP-Adapter 1"] == f"Model: {label}, Image: b.png, Weight: 0.3, Mask: left.png"
    assert result.params["IP-Adapter 0"] == fields["IP-Adapter 0"]


def test_missing_files_are_one_line_naming_them_and_the_hub(tiny_session, adapters, refs, tmp_path):
    session = tiny_session("kolors")
    with pytest.raises(ModelLoadError) as e:
        draw(session, ip_adapter=str(tmp_path), reference=[refs["a"]])
    message = str(e.value)
    assert "\n" not in message and "ip_adapter_plus_general.safetensors" in message
    assert get_family("kolors").ip_adapter.hub_id in message

    import shutil

    no_encoder = tmp_path / "no-encoder"
    shutil.copytree(adapters("kolors", True), no_encoder)
    shutil.rmtree(no_encoder / "image_encoder")
    with pytest.raises(ModelLoadError) as e:
        draw(session, ip_adapter=str(no_encoder), reference=[refs["a"]])
    message = str(e.value)
    assert "\n" not in message and str(no_encoder / "image_encoder") in message and "CLIP ViT-L/14-336" in message


def test_references_without_an_adapter_and_bad_scales_are_one_line_errors(tiny_session, refs):
    with pytest.raises(ConfigError, match="--ip-adapter"):
        draw(tiny_session("sdxl"), reference=[refs["a"]])
    with pytest.raises(ConfigError, match="scale") as e:
        GenerateConfig.from_dict({**BASE, "reference": [f"{refs['a']}:-1"]})
    assert "\n" not in str(e.value)
    assert GenerateConfig(reference=["C:/refs/a.png"]).reference[0].image == "C:/refs/a.png"
    from loraflow.generate.ip_references import MAX_REFERENCES

    with pytest.raises(ConfigError, match="reference") as e:  # each is an encoder pass and a mask per layer
        GenerateConfig.from_dict({**BASE, "reference": [refs["a"]] * (MAX_REFERENCES + 1)})
    assert "\n" not in str(e.value)


def test_an_adapter_of_another_family_is_refused_in_one_line(tiny_session, adapters, refs):
    with pytest.raises(ModelLoadError) as e:
        draw(tiny_session("sd15"), ip_adapter=str(adapters("sdxl")), reference=[refs["a"]])
    assert "\n" not in str(e.value)
    base, _ = draw(tiny_session("sd15"))  # and the model still draws without it
    assert base.shape == (64, 64, 3)


def test_python_api_takes_ip_adapter_and_references(adapters, refs):
    import loraflow

    pipe = loraflow.load("tiny:sdxl", device="cpu")
    kw = dict(negative_prompt=BASE["negative_prompt"], seed=7, steps=2, height=64, width=64, guidance_scale=5.0,
              progress=False)
    base = pipe.generate(BASE["prompt"], **kw)
    steered = pipe.generate(BASE["prompt"], ip_adapter=str(adapters("sdxl")), references=[f"{refs['a']}:0.8"], **kw)
    same_config = pipe.pipeline.generate(GenerateConfig(**{**BASE, "ip_adapter": str(adapters("sdxl")),
                                                           "reference": [f"{refs['a']}:0.8"]}))[0]
    assert steered.images[0].tobytes() == same_config.image.tobytes() != base.images[0].tobytes()
    assert "IP-Adapter 0: " in steered.infotexts[0]


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_references_work_through_kolors_borrowed_task_pipelines(tiny_session, adapters, refs, task):
    """Kolors runs img2img and inpainting with SDXL's pipelines given ChatGLM embeddings; the adapter
    (on the shared UNet) steers those too, and scale 0 is still the base image."""
    session = tiny_session("kolors")
    extra = {"init_image": refs["b"], "strength": 0.7} if task == "img2img" else {"init_image": refs["b"], "mask": refs["left"]}
    base, _ = draw(session, **extra)
    steered, _ = draw(session, ip_adapter=str(adapters("kolors", True)), reference=[refs["a"]], **extra)
    zero, _ = draw(session, ip_adapter=str(adapters("kolors", True)), reference=[f"{refs['a']}:0"], **extra)
    assert np.abs(steered - base).mean() > 1.0
    assert np.array_equal(zero, base)


def test_a_replaced_adapter_is_freed_even_after_a_task_pipeline_was_built_while_attached(adapters, refs, tmp_path):
    """Task pipelines (img2img, inpaint, ControlNet) are built over the loaded pipeline's modules and
    kept; one built while an adapter is attached must not keep that adapter's image encoder alive once
    another adapter replaces it (a server alternating adapters would otherwise hold every encoder)."""
    import gc
    import weakref

    from loraflow.generate.session import GenerationSession
    from loraflow.models.loading import load_pipeline

    session = GenerationSession(load_pipeline("tiny:sdxl", device="cpu"))  # its own: the test counts references
    first = str(adapters("sdxl"))
    draw(session, ip_adapter=first, reference=[refs["a"]])
    encoder = weakref.ref(session.ip_adapter.attached.image_encoder)
    draw(session, init_image=refs["b"], strength=0.5)  # the img2img pipeline is built while `first` is attached
    other = save_tiny_ip_adapter("sdxl", tmp_path / "other", seed=1)
    draw(session, ip_adapter=str(other), reference=[refs["a"]])
    gc.collect()
    assert encoder() is None


def test_a_reference_mask_file_is_stretched_to_the_picture_as_a_region_mask_is(refs, tmp_path):
    """A story hands a regioned character's mask file to its prompt region and to its references, so
    both must read it alike: stretched to the picture (regions.py), not cropped to its aspect. A 64x32
    mask white in its left quarter on a 64x64 picture covers columns 0..15; cropping to the square
    would have cut that quarter off entirely."""
    from loraflow.generate.ip_references import prepare_ip_references

    pixels = np.zeros((32, 64), np.uint8)
    pixels[:, :16] = 255
    Image.fromarray(pixels, "L").save(tmp_path / "wide.png")
    config = GenerateConfig(ip_adapter="unused", reference=[{"image": refs["a"], "mask": str(tmp_path / "wide.png")}])
    mask = np.asarray(prepare_ip_references(config, 64, 64).masks[0])
    expected = np.zeros((64, 64), np.uint8)
    expected[:, :16] = 255
    assert np.array_equal(mask, expected)


def test_references_under_sequential_offload_are_a_one_line_error(adapters, refs):
    """Sequential offload (accelerate's cpu_offload, as `--offload sequential` applies it on CUDA) leaves
    the UNet's weights on the meta device between layers: an adapter loaded "onto the UNet's device"
    would land there without its weights. Simulated on the CPU with accelerate itself."""
    import torch
    from accelerate import cpu_offload

    from loraflow.generate.session import GenerationSession
    from loraflow.models.loading import load_pipeline

    session = GenerationSession(load_pipeline("tiny:sdxl", device="cpu"))  # its own: offloading changes it
    cpu_offload(session.pipe.unet, execution_device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="offload") as e:
        draw(session, ip_adapter=str(adapters("sdxl")), reference=[refs["a"]])
    assert "\n" not in str(e.value) and session.ip_adapter.attached is None
