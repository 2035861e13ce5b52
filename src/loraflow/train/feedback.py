"""What a person watches during training: a progress bar, TensorBoard scalars (OUTPUT/logs; the
default install has TensorBoard), sample-image grids, and the numbers the loss plot is drawn from
(`loss_plot.py`)."""
from __future__ import annotations

import math
from pathlib import Path

from loraflow.atomic import atomic_save_image
from loraflow.generate.memory import vae_tiled
from loraflow.models.prompt_syntax import plain_prompt


class Logger:
    """Progress bar + optional TensorBoard. Only the main process shows/writes anything."""

    def __init__(self, output: Path, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.losses: list[tuple[int, float]] = []
        self.learning_rates: list[tuple[int, float]] = []
        self.validations: list[tuple[int, dict[str, float]]] = []  # (step, mean scores; {} when not scored)
        self.bar = self.tb = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output / "logs"))
        except ImportError:
            print("tensorboard is not installed (the default install has it): no TensorBoard logs; loss curve PNG only")

    def step(self, step: int, loss: float, lr: float, log: bool) -> None:
        self.losses.append((step, loss))
        self.learning_rates.append((step, lr))
        if not self.enabled:
            return
        self.bar.update(1)
        if log:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if self.tb is not None:
                self.tb.add_scalar("train/loss", loss, step)
                self.tb.add_scalar("train/lr", lr, step)

    def validated(self, step: int, scores: dict[str, float]) -> None:
        self.validations.append((step, dict(scores)))
        self.scalars(scores, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)

    def image(self, tag: str, path: Path, step: int) -> None:
        if self.tb is not None:
            import numpy as np
            from PIL import Image

            self.tb.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def image_grid(images: list, columns: int | None = None):
    """PIL images of one size -> one grid image."""
    from PIL import Image

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid




def validation_images(model, prompts: list[str], *, step: int, seed: int, steps: int, resolution: int, out_dir: Path):
    """One image per prompt with the adapters as trained so far, saved as a grid PNG.
    Returns (grid path, the images)."""
    import torch

    pipe = model.pipe
    images = []
    unet_was_training = pipe.unet.training
    pipe.unet.eval()
    # tiled decode: previews need not cost more device memory than a training step (train/plan.py plans it)
    with torch.no_grad(), vae_tiled(pipe.vae):
        for i, prompt in enumerate(prompts):
            generator = torch.Generator("cpu").manual_seed(seed + i)
            images.append(pipe(**_conditioning(model, prompt), num_inference_steps=steps, height=resolution,
                               width=resolution, generator=generator).images[0])
    pipe.unet.train(unet_was_training)
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_save_image(image_grid(images), out_dir / f"step-{step:06d}.png"), images


def _conditioning(model, prompt: str) -> dict:
    """The prompt's embeddings, encoded in the cache pass (`precache.encode_validation_prompts`; the text
    encoders are gone by now), or, when a text encoder trains, the prompt itself for the pipeline."""
    device = model.unet.device
    if prompt not in model.validation_embeds:
        return {"prompt": prompt}
    positive, negative = model.validation_embeds[prompt]
    return model.family.call_kwargs(positive.to(device, model.weight_dtype), negative.to(device, model.weight_dtype))


def score_validation(scorer, images: list, prompts: list[str], step: int, out_dir: Path) -> dict[str, float]:
    """Mean aesthetic / CLIP score of the sample images, appended to samples/scores.jsonl."""
    import json
    import statistics

    scores = scorer.score(images, [plain_prompt(p) for p in prompts])
    means = {}
    for key in ("aesthetic", "clip"):
        values = [getattr(s, key) for s in scores if getattr(s, key) is not None]
        if values:
            means[f"validation/{key}"] = statistics.fmean(values)
    with open(out_dir / "scores.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **means, "images": [s.to_dict() for s in scores]}) + "\n")
    return means
