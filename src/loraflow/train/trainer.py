"""`train(config) -> TrainResult`: the whole LoRA training run, readable top to bottom.

    1. resolve the config, start accelerate (device, mixed precision, processes)
    2. read the dataset (+ held-out and regularization images, evaluation.py / regularization.py),
       plan aspect-ratio buckets, caption variants (captions.py) and loss masks (masks.py)
    3. the caches; load the base model frozen, add fp32 LoRA adapters. When every latent and caption
       embedding the run reads is on disk already (a second run), the VAE and text encoders are not
       loaded at all, unless validation images need them (then the full pipeline is loaded as before)
    4. encode every image and caption once into the disk caches (the text encoders streamed one layer at a
       time when `stream_text_encoders`), and the validation prompts; release the encoders the loop does not run
    5. optimizer + LR schedule, accelerate.prepare, resume
    6. the loop: micro-batches -> loss -> backward -> clip -> step -> EMA (ema.py); checkpoints,
       samples, logs, held-out evaluations and early stop
    7. write the kohya LoRA (+ diffusers file, NAME-ema), loss curve, evaluation table, final samples

Randomness is a pure function of (seed, global micro-batch index m): data order, crops, flips,
caption dropout and variants, latent samples, noise and timesteps. A resumed run therefore continues exactly
where the interrupted one would have been, and N processes x 1 micro-batch see the same data and
noise as 1 process x N accumulated micro-batches (DDP averages what accumulation averages).
"""
from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loraflow.errors import ConfigError, LoraflowError
from loraflow.plan.modes import cuda_free_bytes
from loraflow.train.fit import fit_train_config
from loraflow.train import checkpoint, objective
from loraflow.train.config import TrainConfig
from loraflow.train.ema import LoraEMA
from loraflow.train.evaluation import Evaluation, HeldOut, report
from loraflow.train.export import write_outputs
from loraflow.train.regularization import sample_weights
from loraflow.train.precache import (all_cached, cache_roots, encode_validation_prompts, encoders_needed_in_loop,
                                     make_stores, precache, release_encoders, say, stream_text_encoders)
from loraflow.atomic import atomic_write_text
from loraflow.models.hashing import sha256_file
from loraflow.models.loading import resolve_device
from loraflow.train.buckets import BatchPlan, make_buckets
from loraflow.train.captions import CaptionPolicy, Captions
from loraflow.train.dataset import read_items
from loraflow.train.evaluation import split_held_out
from loraflow.train.feedback import Logger
from loraflow.train.forward import predict, text_conditioning
from loraflow.train.loss_plot import draw_loss_curve
from loraflow.train.masks import Masks
from loraflow.train.model_setup import identity_from_files, identity_of, load_for_training, lora_state_dicts
from loraflow.train.optim import make_lr_scheduler, make_optimizer
from loraflow.train.regularization import add_regularization


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
    ema_path: Path | None = None  # OUTPUT/NAME-ema.safetensors when ema is on
    evaluation: Path | None = None  # OUTPUT/evaluation.md when eval_every is set
    stats: dict = field(default_factory=dict)  # encoder call counts, cache settings, timings
    model: object = None  # the trained TrainModel in memory (pipeline with adapters)


@dataclass
class RunData:
    items: list  # TrainingItem
    sizes: list[tuple[int, int]]  # (w, h) per item
    hashes: list[str]  # file SHA-256 per item
    plan: object  # buckets.BatchPlan
    captions: object  # captions.Captions: the caption of every sighting
    eval_items: list[int] = field(default_factory=list)  # held-out items (0 repeats: never trained on)
    masks: object = None  # masks.Masks: loss weights per item (masked_loss)
    reg_items: list[int] = field(default_factory=list)  # regularization images

    def summary(self) -> str:
        masked = sum(s is not None for s in self.masks.sources)
        return (f"{len(self.eval_items)} held out, {len(self.reg_items)} regularization, {masked} with a mask"
                + (" - masked_loss is on but no image has a mask" if self.masks.enabled and not masked else ""))

    @property
    def train_items(self) -> list:
        other = set(self.eval_items) | set(self.reg_items)
        return [item for i, item in enumerate(self.items) if i not in other]


def _generator(seed: int, m: int):
    """The RNG of micro-batch m: independent of process count and of where a run resumed."""
    import torch

    digest = hashlib.sha256(f"loraflow:{seed}:{m}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


def read_data(config: TrainConfig, text_cached: bool) -> RunData:
    from loraflow.train.images import image_size

    items, eval_items = split_held_out(read_items(config.dataset, config.mask_column), config)
    items, reg_items = add_regularization(items, config)
    sizes = [image_size(i.image_path) for i in items]
    hashes = [sha256_file(i.image_path) for i in items]
    if config.bucketing:
        buckets = make_buckets(config.resolution, config.bucket_step)
    else:
        buckets = [(config.resolution, config.resolution)]
    plan = BatchPlan(sizes, [i.repeats for i in items], buckets, batch_size=config.batch_size, seed=config.seed,
                     center_crop=config.center_crop, random_flip=config.random_flip,
                     max_upscale=config.max_upscale if config.bucketing else float("inf"), step=config.bucket_step)
    captions = Captions([i.caption for i in items], CaptionPolicy.from_config(config), config.seed, plan, text_cached)
    return RunData(items, sizes, hashes, plan, captions, eval_items, Masks(items, config.masked_loss), reg_items)


def total_steps(config: TrainConfig, data: RunData, world: int) -> int:
    if config.max_steps:
        return config.max_steps
    per_step = world * config.gradient_accumulation
    return max(1, math.ceil(config.epochs * data.plan.batches_per_epoch / per_step))


def micro_batch_loss(m: int, config: TrainConfig, data: RunData, model, unet, latents, texts, device):
    """Loss of global micro-batch m (see the module docstring)."""
    entries = data.plan.batch(m)
    gen = _generator(config.seed, m)
    captions = data.captions.for_batch(m)
    if latents.root is not None:  # caches hold the center crop (and its mirror)
        params = latents.get([data.items[e.item].image_path for e in entries], [data.hashes[e.item] for e in entries],
                             [e.crop for e in entries])
    else:
        params = latents.encode([data.items[e.item].image_path for e in entries], [e.crop for e in entries])
    x0 = latents.sample(params, gen)  # (B, 4, h, w)
    noise = objective.sample_noise(x0, gen, config.noise_offset)
    timesteps = objective.sample_timesteps(model.noise_scheduler, x0.shape[0], gen)
    noisy, target = objective.noisy_input_and_target(model.noise_scheduler, x0, noise, timesteps, model.prediction_type)
    embeds, pooled = text_conditioning(model, texts, captions)
    pred = predict(model, unet, noisy, timesteps, embeds, pooled, [e.crop for e in entries],
                   [data.sizes[e.item] for e in entries], device)
    weight = data.masks.weights(entries, x0.shape)  # (B, 1, h, w) or None
    return objective.diffusion_loss(pred, target.to(device), timesteps, model.noise_scheduler,
                                    model.prediction_type, config.min_snr_gamma,
                                    None if weight is None else weight.to(device),
                                    sample_weights(entries, set(data.reg_items), config.reg_weight))


def _save_checkpoint(config, model, accelerator, step, optimizer, lr_scheduler, plan, losses, extras):
    if accelerator.is_main_process:
        unet_state, te_states = lora_state_dicts(model, accelerator.unwrap_model)
        state = {f"unet.{k}": v for k, v in unet_state.items()}
        for name, te in te_states.items():
            state.update({f"{name}.{k}": v for k, v in te.items()})
        m = step * config.gradient_accumulation * accelerator.num_processes
        extra = {"micro_batch": m, "epoch": m // plan.batches_per_epoch, "config": config.model_dump(mode="json"),
                 "losses": losses}
        for part in extras:  # EMA, held-out evaluations: their state resumes with the run
            if part is not None:
                tensors, meta = part.state()
                state.update(tensors)
                extra.update(meta)
        checkpoint.save_checkpoint(config.output, step, state, optimizer, lr_scheduler, extra, config.keep_checkpoints)
    accelerator.wait_for_everyone()


def _resume(config, model, accelerator, optimizer, lr_scheduler, extras) -> tuple[int, list]:
    from peft import set_peft_model_state_dict

    path = checkpoint.resolve_resume(config.resume, config.output)
    if path is None:
        return 0, []
    saved = checkpoint.read_state(path).get("config", {})
    if "eval_every" in saved and bool(saved["eval_every"]) != bool(config.eval_every):  # the split changes the data
        raise ConfigError(f"resume: {path} was trained with eval_every={saved['eval_every']!r}, this run has "
                          f"{config.eval_every!r}; a held-out split changes the training data, keep it on or off")
    for key in ("lora_rank", "lora_targets", "lora_type", "text_encoder_targets", "train_text_encoder", "batch_size",
                "gradient_accumulation", "seed", "eval_dataset", "eval_split", "reg_dataset", "reg_repeats"):
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
    for part in extras:
        if part is not None:
            part.load(state, meta, str(path))
    say(accelerator, f"resumed from {path} at step {meta['step']} (epoch {meta.get('epoch')})")
    return int(meta["step"]), [tuple(x) for x in meta.get("losses", [])]


def _validate(config, model, accelerator, step, logger, ema) -> None:
    with ema.applied() if ema is not None else nullcontext():  # sample images show the EMA weights when on
        _validate_now(config, model, accelerator, step, logger)


def _validate_now(config, model, accelerator, step, logger) -> None:
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
            say(accelerator, "step %d validation: %s" % (step, ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in means.items())))
        logger.validated(step, means)
    accelerator.wait_for_everyone()


def _evaluate(step, config, data, model, unet, latents, texts, accelerator, held_out, logger, started) -> bool:
    """Held-out loss and LoRA effect at `step` (+ the validation scores when samples were scored at this step);
    a new best is kept as NAME-best.safetensors. True: early stopping says stop."""
    loss, effect = held_out.measure(data, model, unet, latents, texts, accelerator)
    logger.scalars({"eval/held_out_loss": loss, "eval/lora_effect": effect}, step)
    # validation runs before the evaluation of the same step; only the main process scores (and saves)
    last = logger.validations[-1] if logger.validations else None
    scores = {k.split("/", 1)[1]: v for k, v in last[1].items()} if last and last[0] == step else {}
    best = held_out.record(Evaluation(step, loss, effect, scores))
    if best and accelerator.is_main_process:
        write_outputs(config, model, data, accelerator, step, started, suffix="-best")
    say(accelerator, f"step {step}: held-out loss {loss:.5f}, LoRA effect {effect:.5f}" + (" (best so far)" if best else ""))
    stop = held_out.should_stop()
    if stop:
        say(accelerator, f"early stop: the held-out loss has not improved for {config.early_stop} evaluations "
                          f"(best at step {held_out.best().step})")
    return stop


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

    cpu = resolve_device(config.device) == "cpu"  # a named device that is absent is an error, not the CPU
    return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)


def _model_and_caches(config: TrainConfig, data, roots, accelerator):
    """Steps 3 and 4 of `train`: (model, latent store, text store, warm). A warm cache (every entry the run
    reads on disk) means the VAE and text encoders are never loaded; otherwise every latent, caption and
    validation prompt is encoded once and the encoders the loop does not run are released."""
    identity = identity_from_files(config)  # None: only known once the model is built (tiny, single file)
    stores = make_stores(identity, *roots) if identity is not None else None
    warm = (stores is not None and not encoders_needed_in_loop(config, *stores)
            and all_cached(config, data, *stores))
    model = load_for_training(config, str(accelerator.device), encoders=not warm)
    latents, texts = stores or make_stores(identity_of(model), *roots)
    if warm:  # a warm run has read every entry already
        say(accelerator, "every latent and caption embedding is cached: VAE and text encoders not loaded")
        accelerator.wait_for_everyone()  # the barrier precache has, for processes that did not find it warm
        return model, latents, texts, warm
    latents.vae, texts.pipe = model.vae, model.pipe
    if config.stream_text_encoders:  # after identity_of: fingerprints read the weights the hooks move off
        stream_text_encoders(model.pipe, model.family, accelerator.device)
    precache(config, data, latents, texts, accelerator)
    encode_validation_prompts(config, model)  # so validation images need no text encoder on the device
    release_encoders(config, model, latents, texts)
    return model, latents, texts, warm


def train(config: TrainConfig | dict, progress: Callable[[int, int], None] | None = None,
          on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Run a training. `progress(step, total)` is called after every optimizer step; an exception
    it raises (e.g. a server's cancel) stops the run there, with saved checkpoints intact.
    `on_step(step, loss, lr)` gets each step's numbers (the web UI's live loss chart)."""

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
    # --vram picks low-VRAM modes; on CUDA a run that would spill into shared memory stops here
    config = fit_train_config(config, str(accelerator.device), lambda text: say(accelerator, text),
                              free_bytes=cuda_free_bytes(str(accelerator.device)))
    output = Path(config.output)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partial(output)
        atomic_write_text(output / "config.yaml", config.to_yaml())
        print(f"loraflow train: resolved config (saved to {output / 'config.yaml'}):\n{config.to_yaml()}", flush=True)
    # 2. data
    roots = cache_roots(config, accelerator)
    data = read_data(config, text_cached=roots[1] is not None)
    world, accum = accelerator.num_processes, config.gradient_accumulation
    steps = total_steps(config, data, world)
    say(accelerator, f"{len(data.train_items)} images ({data.summary()}), {data.plan.batches_per_epoch} batches/epoch in "
                      f"{len(set(data.plan.item_buckets))} bucket(s); {steps} steps x {accum} accumulation x {world} process(es)")
    # 3-4. caches and model; the caches filled and the encoders the loop does not run released
    model, latents, texts, warm = _model_and_caches(config, data, roots, accelerator)
    # 5. optimizer, schedule, prepare, resume
    optimizer = make_optimizer(model.trainable_parameters(), config, str(accelerator.device))
    lr_scheduler = make_lr_scheduler(optimizer, config, steps)
    # the LR schedule is not prepared: we step it once per optimizer step ourselves. Text encoders are
    # called through the pipeline's prompt encoding, not through DDP: their grads are averaged below.
    unet, optimizer = accelerator.prepare(model.unet, optimizer)
    for te in model.text_encoders:
        te.to(accelerator.device)
    ema = LoraEMA.from_config(config, model.trainable_parameters())
    held_out = HeldOut.from_config(config, data)
    extras = (ema, held_out)
    start, past_losses = (_resume(config, model, accelerator, optimizer, lr_scheduler, extras) if config.resume
                          else (0, []))
    logger = Logger(output, steps, start, accelerator.is_main_process)
    logger.losses = list(past_losses)
    for module in (unet, *model.text_encoders):
        module.train()
    # 6. the loop (a held-out evaluation first: the base model's number, which the LoRA should beat)
    if held_out is not None and start == 0:
        _evaluate(0, config, data, model, unet, latents, texts, accelerator, held_out, logger, started)
    step = start
    loop_started, loop_cpu = time.time(), time.process_time()
    while step < steps:
        step_loss = optimizer_step(step, config, data, model, unet, optimizer, lr_scheduler, latents, texts, accelerator)
        step += 1
        if ema is not None:
            ema.after_step(step)
        logger.step(step, step_loss, lr_scheduler.get_last_lr()[0], step % config.log_every == 0)
        if on_step is not None:
            on_step(step, step_loss, lr_scheduler.get_last_lr()[0])
        if progress is not None:
            progress(step, steps)
        if config.validation_every and step % config.validation_every == 0 and step < steps:
            _validate(config, model, accelerator, step, logger, ema)
        # the last step's evaluation follows the last samples, after the loop
        stop = held_out is not None and held_out.due(step) and step < steps and _evaluate(
            step, config, data, model, unet, latents, texts, accelerator, held_out, logger, started)
        # saved after this step's evaluation, so a resume from here has its row (and the run after stop saves)
        if config.save_every and step % config.save_every == 0 and step < steps and not stop:
            _save_checkpoint(config, model, accelerator, step, optimizer, lr_scheduler, data.plan, logger.losses,
                             extras)
        if stop:
            break
    loop_seconds, loop_cpu = time.time() - loop_started, time.process_time() - loop_cpu
    # the last samples before the last evaluation, so its row (and the final checkpoint) holds their scores
    _validate(config, model, accelerator, step, logger, ema)
    if held_out is not None and (not held_out.history or held_out.history[-1].step != step):
        _evaluate(step, config, data, model, unet, latents, texts, accelerator, held_out, logger, started)
    # 7. outputs
    _save_checkpoint(config, model, accelerator, step, optimizer, lr_scheduler, data.plan, logger.losses, extras)
    result = TrainResult(output, None, None, step, logger.losses, model=model)
    if accelerator.is_main_process:
        result.lora_path, result.diffusers_path = write_outputs(config, model, data, accelerator, step, started)
        if ema is not None:
            with ema.applied():
                result.ema_path = write_outputs(config, model, data, accelerator, step, started, suffix="-ema")[0]
        print(f"saved {result.lora_path}", flush=True)
        from loraflow.models.lora.compat import check_trained  # which tools load every module

        models = {"unet": accelerator.unwrap_model(model.unet),
                  **{n: getattr(model.pipe, n, None) for n in model.family.text_encoder_names}}
        print(check_trained(result.lora_path, models), flush=True)
        if held_out is not None:
            table, result.evaluation, _ = report(held_out.history, logger.losses, output, f"{config.name}-best.safetensors")
            print(f"held-out evaluation ({result.evaluation}):\n{table}", flush=True)
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
