"""The disk caches of a run: which latents and caption embeddings it reads, filling them before
the loop, and releasing the encoders once everything is cached (see cache.py for the stores).

The cache pass is where the frozen encoders are on the device. ChatGLM3-6B alone is 11.6 GiB in bf16,
twice the whole Kolors training step, so with the `stream_text_encoders` option the text encoders stay in
host memory and accelerate's `cpu_offload` brings one layer's weights at a time to the device while it
runs (unset, the plan decides: train/fit.py). Validation prompts are encoded here too (`encode_validation_prompts`), so the
text encoders leave before the loop and validation images need only the UNet and the VAE.
"""
from __future__ import annotations

import random
from pathlib import Path

from loraflow.train.config import TrainConfig
from loraflow.train.buckets import crop_for


def say(accelerator, text: str) -> None:
    """Print on the main process only (one line per run, not one per process)."""
    if accelerator.is_main_process:
        print(text, flush=True)


def _default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loraflow" / "train"


def caches_on(config: TrainConfig) -> tuple[bool, bool]:
    """(latents cached, text embeddings cached): random crops differ every time and a training text
    encoder changes its outputs, so either turns its cache off whatever the config asks."""
    return (config.cache_latents and not config.random_crop,
            config.cache_text_embeds and not config.train_text_encoder)


def cache_roots(config: TrainConfig, accelerator) -> tuple[Path | None, Path | None]:
    """Latent and text cache folders; None where a cache is off, and a note why."""
    root = Path(config.cache_dir) if config.cache_dir else _default_cache_dir()
    latents_on, texts_on = caches_on(config)
    if config.cache_latents and not latents_on:
        say(accelerator, "note: latent caching is off because random_crop is on (every crop differs); "
                          "use center crop to cache latents (kohya does the same)")
    if config.cache_text_embeds and not texts_on:
        say(accelerator, "note: text-embedding caching is off because the text encoder trains")
    return root if latents_on else None, root if texts_on else None


def make_stores(identity, latent_root: Path | None, text_root: Path | None):
    """Latent and text stores over `identity` (model_setup.EncoderIdentity), encoders not attached yet."""
    from loraflow.train.cache import LatentStore, TextStore

    return (LatentStore(latent_root, identity.vae_key if latent_root else "", identity.vae_config),
            TextStore(identity.family, text_root, identity.text_key if text_root else ""))


def cached_captions(config: TrainConfig, data) -> list[str]:
    """Every caption the text cache holds for this run (all augmented variants); "" for caption
    dropout and long-prompt padding."""
    return sorted(data.captions.all_cached() | {data.captions.plain(i) for i in data.eval_items})


def cached_crops(config: TrainConfig, data, rank: int = 0, world: int = 1) -> list:
    """(item index, crop) the latent cache holds for process `rank`'s share: the center crop, and its
    mirror when flipping."""

    work = []
    for i in range(rank, len(data.items), world):
        bucket = data.plan.item_buckets[i]
        for flip in ((False, True) if config.random_flip else (False,)):
            work.append((i, crop_for(data.sizes[i], bucket, True, flip, random.Random(0))))
    return work


def in_loop(config: TrainConfig, latents_cached: bool, texts_cached: bool) -> tuple[bool, bool]:
    """(VAE, text encoders): which still run after the cache pass. The VAE: uncached latents, or validation
    images to decode. The text encoders: uncached captions (a text encoder that trains turns the cache off);
    validation prompts do not keep them, they are encoded in the cache pass."""
    return (not latents_cached or bool(config.validation_prompt),
            not texts_cached or config.train_text_encoder)


def encoders_needed_in_loop(config: TrainConfig, latents, texts) -> bool:
    """Does the VAE or a text encoder run after precaching (see `in_loop`)? Validation prompts still need
    the text encoders once, in the cache pass."""
    return any(in_loop(config, latents.root is not None, texts.root is not None)) or bool(config.validation_prompt)


def all_cached(config: TrainConfig, data, latents, texts) -> bool:
    """Is every caption embedding and latent this run reads on disk and readable?"""
    return (all(texts.cached(c) for c in cached_captions(config, data))
            and all(latents.cached(data.hashes[i], crop) for i, crop in cached_crops(config, data)))


def precache(config: TrainConfig, data, latents, texts, accelerator) -> None:
    """Encode every (image, crop variant) and caption this process owns into the caches."""
    from tqdm.auto import tqdm

    rank, world = accelerator.process_index, accelerator.num_processes
    if latents.root is not None:
        work = cached_crops(config, data, rank, world)
        groups: dict = {}
        for w in work:
            groups.setdefault(w[1].bucket, []).append(w)  # one bucket per VAE batch
        bar = tqdm(total=len(work), desc="cache latents", unit="img", disable=not accelerator.is_main_process)
        for group in groups.values():
            for start in range(0, len(group), config.batch_size):
                chunk = group[start:start + config.batch_size]
                latents.get([data.items[i].image_path for i, _ in chunk], [data.hashes[i] for i, _ in chunk],
                            [c for _, c in chunk])
                bar.update(len(chunk))
        bar.close()
    if texts.root is not None:
        for caption in cached_captions(config, data)[rank::world]:
            texts.one(caption)
    accelerator.wait_for_everyone()


def stream_text_encoders(pipe, family, device) -> None:
    """Text encoders whose weights stay in host memory: accelerate's `cpu_offload` hooks bring each layer's
    weights to `device` while it runs and drop them after (prompt encoding finds `device` through the
    hooks, `prompt_encoding.execution_device`). Same outputs as the whole encoder on the device."""
    import torch
    from accelerate import cpu_offload

    for name in family.text_encoder_names:
        encoder = getattr(pipe, name, None)
        if encoder is not None:
            cpu_offload(encoder, execution_device=torch.device(device))


def encode_validation_prompts(config: TrainConfig, model) -> None:
    """Each validation prompt and the empty negative prompt through the text encoders, once, into
    `model.validation_embeds` (host memory); A1111 weighting syntax is kept, as in generation. Not when
    a text encoder trains: its samples must show the encoder as trained so far."""
    import torch

    if not config.validation_prompt or config.train_text_encoder:
        return
    with torch.no_grad():
        for prompt in config.validation_prompt:
            positive, negative = model.family.encode_prompts(model.pipe, [prompt, ""])
            model.validation_embeds[prompt] = (positive.to("cpu"), negative.to("cpu"))


def release_encoders(config, model, latents, texts) -> None:
    """Once everything is cached, the encoders the loop does not run (`in_loop`) are dead weight."""
    vae_runs, texts_run = in_loop(config, latents.root is not None, texts.root is not None)
    import gc

    if not vae_runs:
        latents.release_vae()
        model.pipe.vae = None
    if not texts_run:
        for name in model.family.text_encoder_names:
            setattr(model.pipe, name, None)
        texts.pipe = None
    gc.collect()
