"""The cache pass without the text encoders whole on the device: streamed one layer at a time
(accelerate's cpu_offload), and validation prompts encoded there once, so the encoders leave before the
loop. Both change where weights live, never a value; the planner counts the same choices."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from loraflow.models.families import get_family
from loraflow.models.tiny import build_tiny_pipeline
from loraflow.train.precache import stream_text_encoders
from loraflow.train.trainer import train
from train_helpers import base_config

PROMPTS = ["a (red:1.3) circle, [blue] background", ""]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_streamed_text_encoders_give_the_same_embeddings(family):
    import torch

    fam = get_family(family)
    pipe = build_tiny_pipeline(family)
    whole = fam.encode_prompts(pipe, PROMPTS)
    stream_text_encoders(pipe, fam, "cpu")
    for name in fam.text_encoder_names:  # the weights left the module: only the hooks bring them back
        assert {p.device.type for p in getattr(pipe, name).parameters()} == {"meta"}
    streamed = fam.encode_prompts(pipe, PROMPTS)
    for a, b in zip(whole, streamed):
        assert torch.equal(a.embeds, b.embeds)
        assert (a.pooled is None and b.pooled is None) or torch.equal(a.pooled, b.pooled)


def _text_entries(cache) -> dict:
    return {p.name: load_file(p) for p in (cache / "text").rglob("*.safetensors")}


def test_a_run_with_streamed_encoders_caches_the_same_embeddings(tmp_path, shapes_dataset):
    import torch

    runs = {}
    for stream in (False, True):
        out = tmp_path / f"stream-{stream}"
        train(base_config(out, shapes_dataset, model="tiny:kolors", max_steps=1, stream_text_encoders=stream,
                          cache_dir=str(out / "cache")))
        runs[stream] = _text_entries(out / "cache")
    assert runs[True] and runs[True].keys() == runs[False].keys()
    for name, entry in runs[False].items():
        assert all(torch.equal(entry[k], runs[True][name][k]) for k in entry)


def test_validation_prompts_are_encoded_once_and_the_text_encoders_leave(tmp_path, shapes_dataset, monkeypatch):
    """The samples equal those drawn with the prompts encoded at sampling time by the same text encoders."""
    import numpy as np
    from PIL import Image

    from loraflow.train.feedback import validation_images

    prompt = "a (red:1.2) circle"
    family, encoded = get_family("sd15"), []
    original = family.encode_prompts
    monkeypatch.setattr(family, "encode_prompts", classmethod(
        lambda cls, pipe, prompts: encoded.extend(prompts) or original(pipe, prompts)))
    # samples at steps 1 and 2: the prompt went through the text encoder once, before the loop
    result = train(base_config(tmp_path, shapes_dataset, model="tiny:sd15", max_steps=2, batch_size=2,
                               validation_prompt=[prompt], validation_steps=2, validation_every=1))
    monkeypatch.undo()
    assert encoded.count(prompt) == 1
    assert sorted(p.name for p in (result.output / "samples").glob("step-*.png")) == [
        "step-000001.png", "step-000002.png"]
    model = result.model
    assert model.pipe.text_encoder is None and model.pipe.vae is not None  # gone before the loop; the VAE stays
    saved = np.asarray(Image.open(result.output / "samples" / "step-000002.png"))
    # the same tiny text encoder (fixed seed) back in the pipeline, the prompt encoded now
    model.pipe.text_encoder, model.pipe.tokenizer = (getattr(build_tiny_pipeline("sd15"), n)
                                                    for n in ("text_encoder", "tokenizer"))
    live = model.family.encode_prompts(model.pipe, [prompt, ""])
    model.validation_embeds = {prompt: tuple(live)}
    _, images = validation_images(model, [prompt], step=2, seed=0, steps=2, resolution=64, out_dir=tmp_path / "again")
    assert np.array_equal(np.asarray(images[0]), saved)


def _bytes(module, buffers_only=False) -> int:
    tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
    return sum(t.numel() * t.element_size() for t in tensors)


def test_planned_cache_pass_drops_by_the_streamed_weights_and_validation_holds_unet_and_vae():
    from loraflow.plan.architecture import resolve_architecture
    from loraflow.train.config import TrainConfig
    from loraflow.train.plan import plan_train

    config = TrainConfig(model="tiny:kolors", dataset="d", resolution=64, validation_prompt=["a cat"])
    phases = {s: {p.name: p for p in plan_train(config.model_copy(update={"stream_text_encoders": s})).phases}
              for s in (False, True)}
    arch = resolve_architecture("tiny:kolors", None)
    chatglm = arch.build("text_encoder")
    largest = max(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in chatglm.modules())
    unet, vae = _bytes(arch.build("unet")), _bytes(arch.build("vae"))
    # cache pass: VAE + ChatGLM whole, against VAE + ChatGLM's largest layer while it runs (accelerate keeps
    # buffers, e.g. the rotary frequencies, on the device)
    assert phases[False]["cache pass"].by_category["weights"] == vae + _bytes(chatglm)
    assert phases[True]["cache pass"].by_category["weights"] <= vae + largest + _bytes(chatglm, buffers_only=True)
    assert phases[True]["cache pass"].peak_bytes < phases[False]["cache pass"].peak_bytes
    # training step and validation: the UNet and the VAE, no text encoder
    for name in ("training step", "validation"):
        assert phases[True][name].by_category["weights"] == unet + vae


@pytest.mark.parametrize("other", [{"train_text_encoder": True}, {"text_encoders_on_cpu": True},
                                   {"cache_text_embeds": False}])
def test_streaming_where_there_is_no_cache_pass_to_stream_is_one_line(other):
    from loraflow.errors import ConfigError
    from loraflow.train.config import TrainConfig

    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(dict(model="tiny:sdxl", dataset="d", stream_text_encoders=True, **other))
    line = str(e.value)
    assert "stream_text_encoders" in line and "leave it unset" in line and "\n" not in line
