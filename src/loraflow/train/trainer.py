"""`train(config) -> TrainResult`: the whole LoRA training run, readable top to bottom.

    1. resolve the config, start accelerate (device, mixed precision, processes)
    2. read the dataset, plan aspect-ratio buckets
    3. the caches; load the base model frozen, add fp32 LoRA adapters. When every latent and caption
       embedding the run reads is on disk already (a second run), the VAE and text encoders are not
       loaded at all, unless validation images need them (then the full pipeline is loaded as before)
    4. encode every image and caption once into the disk caches, release unused encoders
    5. optimizer + LR schedule, accelerate.prepare, resume
    6. the loop: micro-batches -> loss -> backward -> clip -> step; checkpoints, samples, logs
    7. write the kohya LoRA (+ diffusers file), loss curve, final samples

Randomness is a pure function of (seed, global micro-batch index m): data order, crops, flips,
caption dropout, latent samples, noise and timesteps. A resumed run therefore continues exactly
where the interrupted one would have been, and N processes x 1 micro-batch see the same data and
noise as 1 process x N accumulated micro-batches (DDP averages what accumulation averages).
"""
from __future__ import annotations

import hashlib
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loraflow.errors import ConfigError, LoraflowError
from loraflow.train import checkpoint, objective
from loraflow.train.config import TrainConfig


class TrainingDiverged(LoraflowError):
    """The loss became NaN/inf; the last checkpoint on disk is the last good state."""


@dataclass
class TrainResult:
    output: Path  # the output folder
    lora_path: Path | None  # OUTPUT/NAME.safetensors (kohya format); None on non-main processes
    diffusers_path: Path | None  # optional diffusers/peft file
    steps: int  # optimizer steps done in total
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), also from before a resume
    loss_curve: Path | None = None  # OUTPUT/loss.png
    loss_figure: object = None  # the same plot as a matplotlib Figure (shows inline in Jupyter)
    learning_rates: list[tuple[int, float]] = field(default_factory=list)  # (step, lr) of this run's steps
    validations: list[tuple[int, dict]] = field(default_factory=list)  # (step, mean validation scores)
    stats: dict = field(default_factory=dict)  # encoder call counts, cache settings, timings
    model: object = None  # the trained TrainModel in memory (pipeline with adapters)


@dataclass
class RunData:
    items: list  # TrainingItem
    sizes: list[tuple[int, int]]  # (w, h) per item
    hashes: list[str]  # file SHA-256 per item
    plan: object  # buckets.BatchPlan


def _generator(seed: int, m: int):
    """The RNG of micro-batch m: independent of process count and of where a run resumed."""
    import torch

    digest = hashlib.sha256(f"loraflow:{seed}:{m}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


def _default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loraflow" / "train"


def _say(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, flush=True)


def read_data(config: TrainConfig) -> RunData:
    from loraflow.train.buckets import BatchPlan, make_buckets
    from loraflow.train.dataset import read_items
    from loraflow.train.images import file_sha256, image_size

    items = read_items(config.dataset)
    sizes = [image_size(i.image_path) for i in items]
    hashes = [file_sha256(i.image_path) for i in items]
    if config.bucketing:
        buckets = make_buckets(config.resolution, config.bucket_step)
    else:
        buckets = [(config.resolution, config.resolution)]
    plan = BatchPlan(sizes, [i.repeats for i in items], buckets, batch_size=config.batch_size, seed=config.seed,
                     center_crop=config.center_crop, random_flip=config.random_flip,
                     max_upscale=config.max_upscale if config.bucketing else float("inf"), step=config.bucket_step)
    return RunData(items, sizes, hashes, plan)


def cache_roots(config: TrainConfig, accelerator) -> tuple[Path | None, Path | None]:
    """Latent and text cache folders; None where a cache is off, and a note why."""
    root = Path(config.cache_dir) if config.cache_dir else _default_cache_dir()
    latent_root = root if config.cache_latents else None
    if config.cache_latents and config.random_crop:
        _say(accelerator, "note: latent caching is off because random_crop is on (every crop differs); "
                          "use center crop to cache latents (kohya does the same)")
        latent_root = None
    text_root = root if config.cache_text_embeds else None
    if config.cache_text_embeds and config.train_text_encoder:
        _say(accelerator, "note: text-embedding caching is off because the text encoder trains")
        text_root = None
    return latent_root, text_root


def make_stores(identity, latent_root: Path | None, text_root: Path | None):
    """Latent and text stores over `identity` (model_setup.EncoderIdentity), encoders not attached yet."""
    from loraflow.train.cache import LatentStore, TextStore

    return (LatentStore(latent_root, identity.vae_key if latent_root else "", identity.vae_config),
            TextStore(identity.family, text_root, identity.text_key if text_root else ""))


def captions_of(config: TrainConfig, data: RunData) -> list[str]:
    return [config.caption_prefix + i.caption for i in data.items]


def cached_captions(config: TrainConfig, data: RunData) -> list[str]:
    """Every caption the text cache holds for this run; "" for caption dropout and long-prompt padding."""
    return sorted(set(captions_of(config, data)) | {""})


def cached_crops(config: TrainConfig, data: RunData, rank: int = 0, world: int = 1) -> list:
    """(item index, crop) the latent cache holds for process `rank`'s share: the center crop, and its
    mirror when flipping."""
    from loraflow.train.buckets import crop_for

    work = []
    for i in range(rank, len(data.items), world):
        bucket = data.plan.item_buckets[i]
        for flip in ((False, True) if config.random_flip else (False,)):
            work.append((i, crop_for(data.sizes[i], bucket, True, flip, random.Random(0))))
    return work


def encoders_needed_in_loop(config: TrainConfig, latents, texts) -> bool:
    """Do the VAE / text encoders run after precaching: uncached inputs, text-encoder LoRA, sample images."""
    return bool(config.validation_prompt) or latents.root is None or texts.root is None or config.train_text_encoder


def all_cached(config: TrainConfig, data: RunData, latents, texts) -> bool:
    """Is every caption embedding and latent this run reads on disk and readable?"""
    return (all(texts.cached(c) for c in cached_captions(config, data))
            and all(latents.cached(data.hashes[i], crop) for i, crop in cached_crops(config, data)))


def precache(config: TrainConfig, data: RunData, latents, texts, accelerator) -> None:
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


def total_steps(config: TrainConfig, data: RunData, world: int) -> int:
    if config.max_steps:
        return config.max_steps
    per_step = world * config.gradient_accumulation
    return max(1, math.ceil(config.epochs * data.plan.batches_per_epoch / per_step))


def micro_batch_loss(m: int, config: TrainConfig, data: RunData, model, unet, latents, texts, device):
    """Loss of global micro-batch m (see the module docstring)."""
    import torch

    from loraflow.train.cache import encode_text_live

    entries = data.plan.batch(m)
    gen = _generator(config.seed, m)
    caption_rng = random.Random(f"{config.seed}:{m}:caption")
    captions = [config.caption_prefix + data.items[e.item].caption for e in entries]
    captions = ["" if caption_rng.random() < config.caption_dropout else c for c in captions]
    if latents.root is not None:  # caches hold the center crop (and its mirror)
        params = latents.get([data.items[e.item].image_path for e in entries], [data.hashes[e.item] for e in entries],
                             [e.crop for e in entries])
    else:
        params = latents.encode([data.items[e.item].image_path for e in entries], [e.crop for e in entries])
    x0 = latents.sample(params, gen)  # (B, 4, h, w)
    noise = objective.sample_noise(x0, gen, config.noise_offset)
    timesteps = objective.sample_timesteps(model.noise_scheduler, x0.shape[0], gen)
    noisy, target = objective.noisy_input_and_target(model.noise_scheduler, x0, noise, timesteps, model.prediction_type)
    if model.text_encoders:
        embeds, pooled = encode_text_live(model.pipe, model.family, captions)
    else:
        embeds, pooled = texts.get(captions)
    kwargs = {}
    if model.family.uses_time_ids:
        time_ids = [model.family.time_ids(*e.crop.time_ids_args(data.sizes[e.item])) for e in entries]
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(device),
                                       "time_ids": torch.tensor(time_ids, dtype=torch.float32, device=device)}
    pred = unet(noisy.to(device), timesteps.to(device), encoder_hidden_states=embeds.to(device), **kwargs).sample
    return objective.diffusion_loss(pred, target.to(device), timesteps, model.noise_scheduler,
                                    model.prediction_type, config.min_snr_gamma)


def _save_checkpoint(config, model, accelerator, step, optimizer, lr_scheduler, plan, losses):
    from loraflow.train.model_setup import lora_state_dicts

    if accelerator.is_main_process:
        unet_state, te_states = lora_state_dicts(model, accelerator.unwrap_model)
        state = {f"unet.{k}": v for k, v in unet_state.items()}
        for name, te in te_states.items():
            state.update({f"{name}.{k}": v for k, v in te.items()})
        m = step * config.gradient_accumulation * accelerator.num_processes
        extra = {"micro_batch": m, "epoch": m // plan.batches_per_epoch, "config": config.model_dump(mode="json"),
                 "losses": losses}
        checkpoint.save_checkpoint(config.output, step, state, optimizer, lr_scheduler, extra, config.keep_checkpoints)
    accelerator.wait_for_everyone()


def _resume(config, model, accelerator, optimizer, lr_scheduler) -> tuple[int, list]:
    from peft import set_peft_model_state_dict

    path = checkpoint.resolve_resume(config.resume, config.output)
    saved = checkpoint.read_state(path).get("config", {})
    for key in ("lora_rank", "lora_targets", "lora_type", "text_encoder_targets", "train_text_encoder", "batch_size",
                "gradient_accumulation", "seed"):
        if key in saved and saved[key] != getattr(config, key):
            raise ConfigError(f"resume: {path} was trained with {key}={saved[key]!r}, this run has "
                              f"{getattr(config, key)!r}; resume with the same value")
    state, meta = checkpoint.load_checkpoint(path, optimizer, lr_scheduler)
    unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    set_peft_model_state_dict(accelerator.unwrap_model(model.unet), unet_state)
    for name in model.family.text_encoder_names:
        te = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        if te:
            set_peft_model_state_dict(accelerator.unwrap_model(getattr(model.pipe, name)), te)
    _say(accelerator, f"resumed from {path} at step {meta['step']} (epoch {meta.get('epoch')})")
    return int(meta["step"]), [tuple(x) for x in meta.get("losses", [])]


def _validate(config, model, accelerator, step, logger) -> None:
    if accelerator.is_main_process and config.validation_prompt:
        from loraflow.train.feedback import validation_images

        out_dir = Path(config.output) / "samples"
        path, images = validation_images(model, config.validation_prompt, step=step, seed=config.seed,
                                         steps=config.validation_steps, resolution=config.resolution,
                                         out_dir=out_dir)
        logger.image("samples", path, step)
        means: dict[str, float] = {}
        if config.validation_clip or config.validation_aesthetic:
            from loraflow.train.feedback import score_validation

            if model.scorer is None:
                from loraflow.score import Scorer

                model.scorer = Scorer.load(clip=config.validation_clip, aesthetic=config.validation_aesthetic,
                                           device=str(accelerator.device))
            means = score_validation(model.scorer, images, config.validation_prompt, step, out_dir)
            _say(accelerator, "step %d validation: %s" % (step, ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in means.items())))
        logger.validated(step, means)
    accelerator.wait_for_everyone()


def _release_encoders(config, model, latents, texts) -> None:
    """Once everything is cached, the VAE and text encoders are dead weight (unless sampling)."""
    if encoders_needed_in_loop(config, latents, texts):
        return
    import gc

    latents.release_vae()
    for name in ("vae", *model.family.text_encoder_names):
        setattr(model.pipe, name, None)
    texts.pipe = None
    gc.collect()


def optimizer_step(step, config, data, model, unet, optimizer, lr_scheduler, latents, texts, accelerator) -> float:
    """Optimizer step `step`: `gradient_accumulation` micro-batches on every process, gradients averaged
    (DDP / accumulation), NaN check before the update, clipping, update. Returns the mean loss."""
    import torch

    world, accum = accelerator.num_processes, config.gradient_accumulation
    total = torch.zeros((), device=accelerator.device)
    for a in range(accum):
        m = (step * accum + a) * world + accelerator.process_index  # global micro-batch index
        sync = a == accum - 1
        with (nullcontext() if sync else accelerator.no_sync(unet)), accelerator.autocast():
            loss = micro_batch_loss(m, config, data, model, unet, latents, texts, accelerator.device)
            accelerator.backward(loss / accum)
        total += loss.detach() / accum
    step_loss = accelerator.reduce(total, reduction="mean").item()
    if not math.isfinite(step_loss):
        last = checkpoint.list_checkpoints(config.output)
        raise TrainingDiverged(f"loss is {step_loss} at step {step + 1}; stopped before the update. "
                               f"Last good checkpoint: {last[-1] if last else 'none'} "
                               "(lower learning_rate, use bf16 instead of fp16, or check the data)")
    if world > 1 and model.text_encoders:
        for p in (p for te in model.text_encoders for p in te.parameters() if p.grad is not None):
            p.grad = accelerator.reduce(p.grad, reduction="mean")
    if config.max_grad_norm:
        accelerator.clip_grad_norm_(model.trainable_parameters(), config.max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def setup_accelerator(config: TrainConfig):
    from accelerate import Accelerator

    cpu = config.device == "cpu"
    return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)


def train(config: TrainConfig | dict, progress: Callable[[int, int], None] | None = None,
          on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Run a training. `progress(step, total)` is called after every optimizer step; an exception
    it raises (e.g. a server's cancel) stops the run there, with saved checkpoints intact.
    `on_step(step, loss, lr)` gets each step's numbers (the web UI's live loss chart)."""
    from loraflow.train.feedback import Logger
    from loraflow.train.loss_plot import draw_loss_curve
    from loraflow.train.files import atomic_write_text
    from loraflow.train.model_setup import identity_from_files, identity_of, load_for_training
    from loraflow.train.optim import make_lr_scheduler, make_optimizer

    # 1. config and accelerate
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    config.check_required()
    if config.resolution is None or not config.model:
        from loraflow.models.loading import DEMO, peek_defaults

        model = config.model or DEMO
        config = config.model_copy(update={
            "model": model, "resolution": config.resolution or peek_defaults(model, config.family).height})
    started = time.time()
    accelerator = setup_accelerator(config)
    output = Path(config.output)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partial(output)
        atomic_write_text(output / "config.yaml", config.to_yaml())
        print(f"loraflow train: resolved config (saved to {output / 'config.yaml'}):\n{config.to_yaml()}", flush=True)
    # 2. data
    data = read_data(config)
    world, accum = accelerator.num_processes, config.gradient_accumulation
    steps = total_steps(config, data, world)
    _say(accelerator, f"{len(data.items)} images, {data.plan.batches_per_epoch} batches/epoch in "
                      f"{len(set(data.plan.item_buckets))} bucket(s); {steps} steps x {accum} accumulation x {world} process(es)")
    # 3. caches and model: a warm cache means the VAE and text encoders are never loaded
    roots = cache_roots(config, accelerator)
    identity = identity_from_files(config)  # None: only known once the model is built (tiny, single file)
    stores = make_stores(identity, *roots) if identity is not None else None
    warm = (stores is not None and not encoders_needed_in_loop(config, *stores)
            and all_cached(config, data, *stores))
    model = load_for_training(config, str(accelerator.device), encoders=not warm)
    latents, texts = stores or make_stores(identity_of(model), *roots)
    # 4. fill the caches (a warm run has read every entry already)
    if warm:
        _say(accelerator, "every latent and caption embedding is cached: VAE and text encoders not loaded")
        accelerator.wait_for_everyone()  # the barrier precache has, for processes that did not find it warm
    else:
        latents.vae, texts.pipe = model.vae, model.pipe
        precache(config, data, latents, texts, accelerator)
        _release_encoders(config, model, latents, texts)
    # 5. optimizer, schedule, prepare, resume
    optimizer = make_optimizer(model.trainable_parameters(), config, str(accelerator.device))
    lr_scheduler = make_lr_scheduler(optimizer, config, steps)
    # the LR schedule is not prepared: we step it once per optimizer step ourselves. Text encoders are
    # called through the pipeline's prompt encoding, not through DDP: their grads are averaged below.
    unet, optimizer = accelerator.prepare(model.unet, optimizer)
    for te in model.text_encoders:
        te.to(accelerator.device)
    start, past_losses = _resume(config, model, accelerator, optimizer, lr_scheduler) if config.resume else (0, [])
    logger = Logger(output, steps, start, accelerator.is_main_process)
    logger.losses = list(past_losses)
    for module in (unet, *model.text_encoders):
        module.train()
    # 6. the loop
    step = start
    loop_started, loop_cpu = time.time(), time.process_time()
    while step < steps:
        step_loss = optimizer_step(step, config, data, model, unet, optimizer, lr_scheduler, latents, texts, accelerator)
        step += 1
        logger.step(step, step_loss, lr_scheduler.get_last_lr()[0], step % config.log_every == 0)
        if on_step is not None:
            on_step(step, step_loss, lr_scheduler.get_last_lr()[0])
        if progress is not None:
            progress(step, steps)
        if config.save_every and step % config.save_every == 0 and step < steps:
            _save_checkpoint(config, model, accelerator, step, optimizer, lr_scheduler, data.plan, logger.losses)
        if config.validation_every and step % config.validation_every == 0 and step < steps:
            _validate(config, model, accelerator, step, logger)
    loop_seconds, loop_cpu = time.time() - loop_started, time.process_time() - loop_cpu
    # 7. outputs
    _save_checkpoint(config, model, accelerator, step, optimizer, lr_scheduler, data.plan, logger.losses)
    result = TrainResult(output, None, None, step, logger.losses, model=model)
    if accelerator.is_main_process:
        result.lora_path, result.diffusers_path = write_outputs(config, model, data, accelerator, step, started)
        print(f"saved {result.lora_path}", flush=True)
        from loraflow.models.lora.compat import check_trained  # which tools load every module

        models = {"unet": accelerator.unwrap_model(model.unet),
                  **{n: getattr(model.pipe, n, None) for n in model.family.text_encoder_names}}
        print(check_trained(result.lora_path, models), flush=True)
    _validate(config, model, accelerator, step, logger)
    if accelerator.is_main_process:  # after the last validation, so the plot shows it too
        result.learning_rates, result.validations = logger.learning_rates, logger.validations
        result.loss_figure, result.loss_curve = draw_loss_curve(
            logger.losses, output / "loss.png", logger.learning_rates, logger.validations)
    logger.close()
    result.stats = {"vae_encode_calls": latents.encode_calls, "text_encode_calls": texts.encode_calls,
                    "latent_cache": latents.root is not None, "text_cache": texts.root is not None,
                    "encoders_loaded": not warm,
                    "seconds": time.time() - started, "loop_seconds": loop_seconds, "loop_cpu_seconds": loop_cpu,
                    "steps_per_second": (step - start) / max(loop_seconds, 1e-9), "processes": world}
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def write_outputs(config, model, data, accelerator, step, started):
    import torch

    from loraflow.train import export
    from loraflow.train.model_setup import lora_state_dicts

    unet_state, te_states = lora_state_dicts(model, accelerator.unwrap_model)
    model_hash = export.base_model_sha256(model.path)
    epochs = math.ceil(step * config.gradient_accumulation * accelerator.num_processes / data.plan.batches_per_epoch)
    meta = export.training_metadata(
        config, family=model.family.name, model_name=model.name, model_hash=model_hash, num_images=len(data.items),
        steps=step, epochs=epochs, started=started, prediction_type=model.prediction_type)
    tags = export.tag_frequency([(i.image_path.parent.name, config.caption_prefix + i.caption) for i in data.items])
    return export.save_lora_files(
        Path(config.output), config.name, unet_state, te_states, family=model.family.name, rank=config.lora_rank,
        alpha=config.lora_alpha, dtype=getattr(torch, config.save_dtype), resolution=config.resolution,
        tag_freq=tags, metadata=meta, with_diffusers=config.save_format == "kohya+diffusers",
        lora_type=config.lora_type)
