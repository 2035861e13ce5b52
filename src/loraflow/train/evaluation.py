"""Held-out evaluation: "when do I stop?" answered with a number (sd-scripts #193).

Every `eval_every` steps the LoRA is scored on images it never trains on: the denoising loss at
`eval_timesteps` fixed timesteps (evenly spread over the schedule) with noise and latent samples
drawn from generators keyed by (seed, image) only. Every evaluation therefore sees the same inputs,
so the numbers are comparable across steps, runs and resumes; only the weights change. The plain
(unweighted) MSE over the whole image is used: min-SNR, loss masks and regularization weights shape
training, not the measure. The trained weights are scored (not the EMA).

The held-out images are `eval_dataset`, or `eval_split` of the dataset chosen by seed; they are
appended to the run's items with 0 repeats, so the caches encode them and training never sees them.
Each evaluation also records the LoRA's effect size on the same inputs: the relative change of the
held-out prediction, ||pred(LoRA on) - pred(LoRA off)|| / ||pred(LoRA off)|| summed over images x
timesteps, with every adapter (UNet and trained text encoders) switched off through peft. It is 0 at
step 0 (lora_B starts at zero) and shows how far the LoRA has moved the model, with no extra model
needed. When validation images were generated and scored at the same step, their mean CLIP /
aesthetic scores join the row (no extra images are generated for it).
The step with the lowest held-out loss is the recommended one: its LoRA is kept as
NAME-best.safetensors, and OUTPUT/evaluation.md (+ evaluation.png) lists every evaluation.
`early_stop K` stops the run once the best evaluation is K evaluations old.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from contextlib import contextmanager
from pathlib import Path

from loraflow.errors import ConfigError
import loraflow.train.objective as objective
from loraflow.atomic import atomic_write_bytes, atomic_write_text
from loraflow.train.buckets import crop_for
from loraflow.train.dataset import read_items
from loraflow.train.forward import predict, text_conditioning


def split_held_out(items: list, config) -> tuple[list, list[int]]:
    """(items incl. held-out ones with 0 repeats, indices of the held-out ones)."""
    if not config.eval_every:
        return items, []
    if config.eval_dataset:
        held = read_items(config.eval_dataset)
        train_items = items
    else:
        if len(items) < 2:
            raise ConfigError(f"eval_split: the dataset has {len(items)} image; hold-out needs at least 2 "
                              "(or give eval_dataset)")
        k = min(len(items) - 1, max(1, round(len(items) * config.eval_split)))
        chosen = set(random.Random(f"{config.seed}:eval-split").sample(range(len(items)), k))
        held = [items[i] for i in sorted(chosen)]
        train_items = [item for i, item in enumerate(items) if i not in chosen]
    held = [dataclasses.replace(item, repeats=0) for item in held]
    return train_items + held, list(range(len(train_items), len(train_items) + len(held)))


def fixed_timesteps(num_train_timesteps: int, count: int) -> list[int]:
    """`count` timesteps at the centres of equal slices of [0, T)."""
    return [int((j + 0.5) * num_train_timesteps / count) for j in range(count)]


def should_stop(losses: list[float], patience: int) -> bool:
    """True when the lowest of `losses` (the first, on ties) is `patience` or more evaluations old."""
    if not losses:
        return False
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    return len(losses) - 1 - best >= patience


def _generator(seed: int, index: int):
    import torch

    digest = hashlib.sha256(f"loraflow:eval:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


EFFECT_HEADER = "LoRA effect (‖pred on − pred off‖ / ‖pred off‖, held-out)"


@dataclasses.dataclass
class Evaluation:
    """One row of the evaluation table."""
    step: int
    loss: float  # mean held-out MSE over images x fixed timesteps
    effect: float | None = None  # relative prediction change, LoRA on vs off (None: older checkpoint)
    scores: dict[str, float] = dataclasses.field(default_factory=dict)  # mean validation "clip" / "aesthetic"

    @classmethod
    def from_json(cls, value) -> "Evaluation":
        if isinstance(value, (list, tuple)):  # checkpoints written before effect and scores: [step, loss]
            return cls(int(value[0]), float(value[1]))
        return cls(int(value["step"]), float(value["loss"]),
                   None if value.get("effect") is None else float(value["effect"]),
                   {k: float(v) for k, v in value.get("scores", {}).items()})


@contextmanager
def adapters_off(*modules):
    """Every peft adapter layer in `modules` disabled (weight 0), then re-enabled. peft's enable_adapters
    also resets requires_grad, so the flags are put back as they were."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]
    grads = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in grads:
            p.requires_grad_(flag)


class HeldOut:
    """The held-out images of a run and the evaluations so far."""

    def __init__(self, config, indices: list[int]):
        self.config, self.indices = config, indices
        self.history: list[Evaluation] = []

    @classmethod
    def from_config(cls, config, data) -> "HeldOut | None":
        return cls(config, data.eval_items) if config.eval_every else None

    # ---- checkpoint state (see trainer._save_checkpoint / _resume) ---------------------------
    def state(self) -> tuple[dict, dict]:
        return {}, {"evaluations": [dataclasses.asdict(e) for e in self.history]}

    def load(self, tensors: dict, meta: dict, source: str) -> None:
        self.history = [Evaluation.from_json(e) for e in meta.get("evaluations", [])]

    # ---- evaluating --------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step % self.config.eval_every == 0

    def measure(self, data, model, unet, latents, texts, accelerator) -> tuple[float, float]:
        """(mean held-out loss over images x fixed timesteps, LoRA effect size); the same on every process."""
        import torch

        scheduler = model.noise_scheduler
        timesteps = torch.tensor(fixed_timesteps(scheduler.config.num_train_timesteps, self.config.eval_timesteps))
        k = len(timesteps)
        net = accelerator.unwrap_model(unet)  # no DDP collectives: every process computes the same value
        was_training = net.training
        net.eval()
        total, changed, base = 0.0, 0.0, 0.0
        with torch.no_grad(), accelerator.autocast():
            for i in self.indices:
                crop = crop_for(data.sizes[i], data.plan.item_buckets[i], True, False, random.Random(0))
                path = data.items[i].image_path
                params = (latents.get([path], [data.hashes[i]], [crop]) if latents.root is not None
                          else latents.encode([path], [crop]))
                gen = _generator(self.config.seed, i)
                x0 = latents.sample(params, gen).expand(k, -1, -1, -1)  # one latent sample, k timesteps
                noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
                noisy, target = objective.noisy_input_and_target(scheduler, x0, noise, timesteps, model.prediction_type)

                def prediction():  # text conditioning inside: a trained text encoder's adapters count too
                    embeds, pooled = text_conditioning(model, texts, [data.captions.plain(i)] * k)
                    return predict(model, net, noisy, timesteps, embeds, pooled, [crop] * k, [data.sizes[i]] * k,
                                   accelerator.device).float()

                pred = prediction()
                with adapters_off(net, *model.text_encoders):
                    pred_off = prediction()
                total += torch.nn.functional.mse_loss(pred, target.to(pred.device).float()).item()
                changed += (pred - pred_off).square().sum().item()
                base += pred_off.square().sum().item()
        net.train(was_training)
        return total / len(self.indices), math.sqrt(changed / base) if base > 0 else 0.0

    def record(self, evaluation: Evaluation) -> bool:
        """Add an evaluation; True when it is the best so far."""
        self.history.append(evaluation)
        earlier = [e.loss for e in self.history[:-1]]
        return not earlier or evaluation.loss < min(earlier)

    def should_stop(self) -> bool:
        return bool(self.config.early_stop) and should_stop([e.loss for e in self.history], self.config.early_stop)

    def best(self) -> Evaluation | None:
        return best_of(self.history) if self.history else None


def best_of(history: list[Evaluation]) -> Evaluation:
    """The recommended evaluation: the lowest held-out loss, the earliest on ties."""
    return min(history, key=lambda e: (e.loss, e.step))


def table_rows(history: list[Evaluation], train_losses: list[tuple[int, float]], best_file: str) -> list[list[str]]:
    """The table's cells, one list per evaluation (see HEADER); an empty cell: not measured at that step."""
    best_step = best_of(history).step
    rows, previous = [], 0
    for e in history:
        window = [v for s, v in train_losses if previous < s <= e.step and math.isfinite(v)]
        rows.append([str(e.step), f"{e.loss:.5f}", f"{sum(window) / len(window):.5f}" if window else "-",
                     "" if e.effect is None else f"{e.effect:.5f}",
                     *(f"{e.scores[k]:.4f}" if k in e.scores else "" for k in ("clip", "aesthetic")),
                     f"recommended: {best_file}" if e.step == best_step else ""])
        previous = e.step
    return rows


HEADER = ["step", "held-out loss", "train loss (mean since last evaluation)", EFFECT_HEADER,
          "validation CLIP (mean)", "validation aesthetic (mean)", ""]


def report(history: list[Evaluation], train_losses: list[tuple[int, float]], output: Path,
           best_file: str) -> tuple[str, Path, Path | None]:
    """The evaluation table (markdown, also returned for printing) and a plot when matplotlib is there."""
    lines = ["| " + " | ".join(HEADER) + " |", "|---:|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(history, train_losses, best_file)]
    table = "\n".join(lines) + "\n"
    path = atomic_write_text(output / "evaluation.md", f"# Held-out evaluation\n\n{table}")
    return table, path, _plot(history, train_losses, best_of(history).step, output / "evaluation.png")




def _plot(history, train_losses, best_step: int, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, ax = plt.subplots(figsize=(8, 4))
    if train_losses:
        ax.plot(*zip(*train_losses), color="#aabbe0", linewidth=0.8, label="train loss")
    ax.plot([e.step for e in history], [e.loss for e in history], marker="o", color="#143c9f", label="held-out loss")
    ax.axvline(best_step, color="#c03030", linestyle="--", label=f"recommended: step {best_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles = ax.get_legend_handles_labels()
    measured = [e for e in history if e.effect is not None]
    if measured:  # a different unit: its own axis on the right
        right = ax.twinx()
        right.plot([e.step for e in measured], [e.effect for e in measured], marker="s", color="#2a8a4a",
                   linewidth=0.8, label="LoRA effect (relative)")
        right.set_ylabel("LoRA effect")
        handles = [a + b for a, b in zip(handles, right.get_legend_handles_labels())]
    ax.legend(*handles)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
