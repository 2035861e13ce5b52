"""A loaded model ready to draw: LoRAs applied, sampler chosen, prompt embeddings cached.

`GenerationSession` is what `generate`, `storyboard` and the server share: load once, then call
`generate(config)` many times. Text encoders run once per distinct prompt (and LoRA set).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loraflow import __version__
from loraflow.errors import ConfigError
from loraflow.generate.options import GenerateConfig, ModelOptions
from loraflow.models.families import PromptEmbeds
from loraflow.models.loading import LoadedModel, load_pipeline
from loraflow.models.prompt_syntax import extract_lora_tags

ProgressFn = Callable[[int, int], None]  # (step done, total steps)


@dataclass
class ImageResult:
    image: Any  # PIL.Image
    seed: int
    infotext: str
    params: dict
    path: Path | None = None


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    weight: float

    @property
    def name(self) -> str:
        return self.path.stem


def parse_lora_arg(text: str, lora_dirs: list[str]) -> LoraSpec:
    """`FILE[:WEIGHT]` (weight defaults to 1.0); FILE may be a bare name found in `lora_dirs`."""
    name, weight = text, 1.0
    if ":" in text:
        head, tail = text.rsplit(":", 1)
        try:
            name, weight = head, float(tail)
        except ValueError:
            name = text  # a colon that is part of the path (C:\...)
    return LoraSpec(find_lora_file(name, lora_dirs), weight)


def find_lora_file(name: str, lora_dirs: list[str]) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for folder in lora_dirs:
        for candidate in (Path(folder) / name, Path(folder) / f"{name}.safetensors"):
            if candidate.is_file():
                return candidate
    where = f" (searched: {', '.join(lora_dirs)})" if lora_dirs else " (pass --lora-dir to search folders)"
    raise ConfigError(f"LoRA not found: {name}{where}")


class GenerationSession:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.family = loaded.family
        self._base_scheduler_class = type(self.pipe.scheduler)
        self._base_scheduler_config = dict(self.pipe.scheduler.config)
        self._loras: tuple[LoraSpec, ...] = ()
        self._prompt_cache: dict[tuple, PromptEmbeds] = {}
        self._model_hash: str | None = None
        self._lora_hashes: dict[Path, str] = {}
        self.encoder_calls = 0  # how many prompts actually went through the text encoders

    @classmethod
    def from_options(cls, options: ModelOptions) -> "GenerationSession":
        return cls(load_pipeline(
            options.model, family=options.family, vae=options.vae, dtype=options.dtype,
            device=options.device, allow_pickle=options.allow_pickle,
        ))

    # ---- LoRAs ------------------------------------------------------------------------------
    def set_loras(self, loras: list[LoraSpec]) -> None:
        """Apply exactly these LoRAs (no-op when unchanged, so a story reuses them for free)."""
        loras_t = tuple(loras)
        if loras_t == self._loras:
            return
        from loraflow.models.lora.load import apply_loras, remove_loras

        if self._loras:
            remove_loras(self.pipe)
        if loras_t:
            apply_loras(self.pipe, [(str(l.path), l.weight) for l in loras_t], self.family.name)
        self._loras = loras_t

    # ---- prompts ----------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> list[PromptEmbeds]:
        """Embeddings per prompt (cached), padded to one length so they can be batched."""
        key_loras = tuple((str(l.path), l.weight) for l in self._loras)
        missing = [p for p in dict.fromkeys(prompts) if (p, key_loras) not in self._prompt_cache]
        if missing:
            import torch

            with torch.no_grad():
                encoded = self.family.encode_prompts(self.pipe, missing)
            self.encoder_calls += len(missing)
            for p, e in zip(missing, encoded):
                self._prompt_cache[(p, key_loras)] = e
        embeds = [self._prompt_cache[(p, key_loras)] for p in prompts]
        return self._same_length(embeds, key_loras)

    def _same_length(self, embeds: list[PromptEmbeds], key_loras) -> list[PromptEmbeds]:
        """CLIP prompts of different chunk counts are padded with empty-prompt chunks (as A1111)."""
        longest = max(e.embeds.shape[1] for e in embeds)
        if all(e.embeds.shape[1] == longest for e in embeds):
            return embeds
        import torch

        empty = self.encode([""])[0].embeds  # one chunk (1, 77, D)
        out = []
        for e in embeds:
            extra = (longest - e.embeds.shape[1]) // empty.shape[1]
            out.append(PromptEmbeds(torch.cat([e.embeds] + [empty] * extra, dim=1), e.pooled))
        return out

    # ---- sampling ---------------------------------------------------------------------------
    def set_scheduler(self, name: str | None) -> None:
        from loraflow.generate.schedulers import make_scheduler

        if name:
            self.pipe.scheduler = make_scheduler(name, self._base_scheduler_config)
        elif type(self.pipe.scheduler) is not self._base_scheduler_class:
            self.pipe.scheduler = self._base_scheduler_class.from_config(self._base_scheduler_config)

    def resolve_loras(self, config: GenerateConfig) -> tuple[str, list[LoraSpec]]:
        prompt, tags = extract_lora_tags(config.prompt)
        specs = [parse_lora_arg(arg, config.lora_dir) for arg in config.lora]
        specs += [LoraSpec(find_lora_file(name, config.lora_dir), weight) for name, weight in tags]
        return prompt, specs

    def generate(self, config: GenerateConfig, progress: ProgressFn | None = None) -> list[ImageResult]:
        """Make `config.num_images` images; image i uses seed `seed + i` (as A1111 does)."""
        seed = config.seed if config.seed is not None else random.randrange(2**32 - config.num_images)
        items = [config.model_copy(update={"seed": seed + i, "num_images": 1}) for i in range(config.num_images)]
        return self.generate_many(items, batch_size=config.batch_size, progress=progress)

    def generate_many(self, items: list[GenerateConfig], batch_size: int = 1,
                      progress: ProgressFn | None = None) -> list[ImageResult]:
        """One image per item (each with its own prompt and seed); consecutive items that share
        size, steps, guidance, sampler and LoRAs run together in batches of `batch_size`."""
        jobs = [self._resolve(item) for item in items]
        total = sum(job["steps"] for job in jobs)
        results: list[ImageResult] = []
        done = 0
        i = 0
        while i < len(jobs):
            group = [jobs[i]]
            while (len(group) < batch_size and i + len(group) < len(jobs)
                   and _same_settings(jobs[i + len(group)], group[0])):
                group.append(jobs[i + len(group)])
            results += self._render(group, progress, done, total)
            done += sum(job["steps"] for job in group)
            i += len(group)
        return results

    def _resolve(self, config: GenerateConfig) -> dict:
        d = self.family.defaults
        prompt, loras = self.resolve_loras(config)
        return dict(
            config=config, prompt=prompt, loras=tuple(loras),
            seed=config.seed if config.seed is not None else random.randrange(2**32),
            height=config.height or d.height, width=config.width or d.width,
            steps=config.num_inference_steps or d.num_inference_steps,
            guidance=d.guidance_scale if config.guidance_scale is None else config.guidance_scale,
        )

    def _render(self, group: list[dict], progress, done: int, total: int) -> list[ImageResult]:
        import torch

        first = group[0]
        # 1. LoRAs (from --lora and <lora:...> tags) and the sampler
        self.set_loras(list(first["loras"]))
        self.set_scheduler(first["config"].scheduler)
        # 2. text conditioning, once per distinct prompt; one length for the whole batch
        n = len(group)
        embeds = self.encode([j["prompt"] for j in group] + [j["config"].negative_prompt for j in group])
        dtype = self.pipe.unet.dtype
        kwargs = self.family.call_kwargs(_stack(embeds[:n], dtype), _stack(embeds[n:], dtype))

        def on_step_end(pipe, i, t, callback_kwargs):
            if progress:
                progress(done + (i + 1) * n, total)
            return callback_kwargs

        # 3. denoise; one CPU generator per image, so a batch equals its items run one by one
        with torch.no_grad():
            images = self.pipe(
                **kwargs,
                height=first["height"],
                width=first["width"],
                num_inference_steps=first["steps"],
                guidance_scale=first["guidance"],
                generator=[torch.Generator("cpu").manual_seed(j["seed"]) for j in group],
                callback_on_step_end=on_step_end,
                output_type="pil",
            ).images
        # 4. infotext per image
        results = []
        for job, image in zip(group, images):
            params = self._infotext_params(job)
            results.append(ImageResult(image, job["seed"], self._infotext(job["prompt"], job["config"], params), params))
        return results

    # ---- infotext -----------------------------------------------------------------------------
    def _infotext_params(self, job: dict) -> dict:
        from loraflow.generate.schedulers import infotext_fields

        params: dict[str, Any] = {
            "Steps": job["steps"], **infotext_fields(job["config"].scheduler, self.pipe.scheduler),
            "CFG scale": job["guidance"], "Seed": job["seed"], "Size": f"{job['width']}x{job['height']}",
        }
        if self.loaded.path is not None:
            params["Model hash"] = self.model_hash()
        params["Model"] = self.loaded.name
        if "vae" in self.loaded.extras:
            params["VAE"] = self.loaded.extras["vae"]
        if self._loras:
            params["Lora hashes"] = {l.name: self.lora_hash(l.path) for l in self._loras}
        params["Version"] = f"loraflow {__version__}"
        return params

    def _infotext(self, prompt: str, config: GenerateConfig, params: dict) -> str:
        from loraflow.generate.infotext import format_infotext

        # A1111 keeps <lora:...> tags in the saved prompt; so do we, so a re-run applies them again.
        shown = config.prompt if "<lora:" in config.prompt else prompt
        extra = "".join(f" <lora:{l.name}:{l.weight:g}>" for l in self._loras
                        if f"<lora:{l.name}:" not in shown and f"<lora:{l.name}>" not in shown)
        return format_infotext(shown + extra, config.negative_prompt, params)

    def model_hash(self) -> str:
        if self._model_hash is None:
            from loraflow.models.hashing import model_hash

            self._model_hash = model_hash(self.loaded.path)
        return self._model_hash

    def lora_hash(self, path: Path) -> str:
        if path not in self._lora_hashes:
            from loraflow.models.hashing import lora_hash

            self._lora_hashes[path] = lora_hash(path)
        return self._lora_hashes[path]


_BATCH_KEYS = ("loras", "height", "width", "steps", "guidance")


def _same_settings(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in _BATCH_KEYS) and a["config"].scheduler == b["config"].scheduler


def _stack(embeds: list[PromptEmbeds], dtype) -> PromptEmbeds:
    import torch

    pooled = None if embeds[0].pooled is None else torch.cat([e.pooled for e in embeds]).to(dtype)
    return PromptEmbeds(torch.cat([e.embeds for e in embeds]).to(dtype), pooled)


def save_results(results: list[ImageResult], out_dir: str | Path, stem: str | None = None) -> list[Path]:
    """Write PNGs with the A1111 `parameters` chunk, numbered like A1111 (`00012-1234.png`)."""
    from loraflow.generate.infotext import save_png_with_infotext

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = next_index(out)
    paths = []
    for k, r in enumerate(results):
        name = f"{stem}.png" if stem and len(results) == 1 else f"{index + k:05d}-{r.seed}.png"
        r.path = save_png_with_infotext(r.image, out / name, r.infotext)
        paths.append(r.path)
    return paths


def next_index(folder: Path) -> int:
    numbers = [int(p.name[:5]) for p in folder.glob("[0-9][0-9][0-9][0-9][0-9]-*.png")]
    return max(numbers, default=-1) + 1

