"""A loaded model ready to draw: LoRAs applied, sampler chosen, prompt embeddings cached.

`GenerationSession` is what `generate`, `storyboard` and the server share: load once, then call
`generate(config)` many times. Text encoders run once per distinct prompt (and LoRA set).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loraflow import __version__
from loraflow.atomic import atomic_save_image
from loraflow.config import split_weighted
from loraflow.errors import ConfigError
from loraflow.generate.control.infotext import reference_params
from loraflow.generate.control.pipelines import accepts
from loraflow.generate.control.references import (
    References, denoising_steps, paste_unmasked, prepare_references, vae_round_trip,
)
from loraflow.generate.derived import DerivedModels
from loraflow.generate.engine import Denoising, denoise
from loraflow.generate.infotext import format_infotext, save_png_with_infotext
from loraflow.generate.ip_references import (
    PreparedReferences, ip_adapter_kwargs, ip_reference_key, ip_reference_params, prepare_ip_references,
)
from loraflow.generate.options import GenerateConfig, ModelOptions
from loraflow.generate.schedulers import infotext_fields, make_scheduler
from loraflow.models import hashing
from loraflow.models.families import PromptEmbeds
from loraflow.models.ip_adapter import IPAdapterSlot, locate_ip_adapter
from loraflow.models.loading import LoadedModel, load_pipeline
from loraflow.models.lora.apply import apply_loras, remove_loras
from loraflow.models.prompt_syntax import extract_lora_tags
from loraflow.generate.memory import apply_offload, enable_vae_tiling, load_device
from loraflow.models.loading import resolve_device

MAX_LORA_WEIGHT = 100.0

ProgressFn = Callable[[int, int], None]  # (step done, total steps)


@dataclass
class ImageResult:
    image: Any  # PIL.Image
    seed: int
    infotext: str
    params: dict
    path: Path | None = None
    control_images: list = field(default_factory=list)  # the control maps that steered it (PIL)


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    weight: float

    def __post_init__(self):
        # ComfyUI's LoraLoader range; 1e308 or NaN only turns every image into noise or black.
        if not math.isfinite(self.weight) or abs(self.weight) > MAX_LORA_WEIGHT:
            raise ConfigError(f"LoRA {self.path.name}: weight {self.weight} is outside "
                              f"[-{MAX_LORA_WEIGHT:g}, {MAX_LORA_WEIGHT:g}]")

    @property
    def name(self) -> str:
        return self.path.stem

    def stamp(self) -> tuple:
        """What identifies the file's content cheaply: a file rewritten in place changes its size or
        mtime, one replaced by rename its inode. Part of every key that depends on the LoRA's weights."""
        return (str(self.path), self.weight, *hashing.file_stamp(self.path))


@dataclass
class RenderItem:
    """One image to draw: its config with every default resolved (what batches are grouped by)."""

    config: GenerateConfig
    prompt: str  # without <lora:...> tags
    loras: tuple[LoraSpec, ...]
    seed: int
    height: int
    width: int
    steps: int
    guidance: float
    reference: tuple  # `reference_key`: what must match for two items to share a batch

    def batch_key(self) -> tuple:
        return (self.loras, self.height, self.width, self.steps, self.guidance, self.reference, self.config.scheduler,
                tuple(r.region for r in self.config.regions))  # a batch shares its regions' masks


def parse_lora_arg(text: str, lora_dirs: list[str]) -> LoraSpec:
    """`FILE[:WEIGHT]` (weight defaults to 1.0); FILE may be a bare name found in `lora_dirs`."""
    name, weight = split_weighted(text, 1.0)
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
        self._lora_stamps: tuple[tuple, ...] = ()  # LoraSpec.stamp() of what is applied
        self._prompt_cache: dict[tuple, PromptEmbeds] = {}
        self._model_hash: str | None = None
        self._lora_hashes: dict[tuple, str] = {}
        self.derived = DerivedModels(self.pipe, self.family)  # task pipelines and ControlNets of this model
        self._controlnet_labels: dict[str, str] = {}  # path -> "name [hash]" for the infotext
        self.ip_adapter = IPAdapterSlot(self.pipe, self.family)  # reference images; attached while a run has some
        self.encoder_calls = 0  # how many prompts actually went through the text encoders

    @classmethod
    def from_options(cls, options: ModelOptions) -> "GenerationSession":

        device = resolve_device(options.device)
        loaded = load_pipeline(
            options.model, family=options.family, vae=options.vae, dtype=options.dtype,
            device=load_device(options.offload, device), allow_pickle=options.allow_pickle,
        )
        apply_offload(loaded.pipe, loaded.family, options.offload, device)
        if options.vae_tiling:
            enable_vae_tiling(loaded.pipe.vae)
        return cls(loaded)

    # ---- LoRAs ------------------------------------------------------------------------------
    def set_loras(self, loras: list[LoraSpec], allow_pickle: bool = False) -> None:
        """Apply exactly these LoRAs (no-op when unchanged, so a story reuses them for free; a LoRA
        file changed on disk since it was applied counts as a change)."""
        loras_t = tuple(loras)
        stamps = tuple(l.stamp() for l in loras_t)
        if stamps == self._lora_stamps:
            self._loras = loras_t
            return
        if self._loras:
            remove_loras(self.pipe)
        self._loras, self._lora_stamps = (), ()
        if loras_t:
            apply_loras(self.pipe, [(str(l.path), l.weight) for l in loras_t], self.family.name,
                        allow_pickle=allow_pickle)
        self._loras, self._lora_stamps = loras_t, stamps

    # ---- prompts ----------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> list[PromptEmbeds]:
        """Embeddings per prompt (cached), padded to one length so they can be batched."""
        key_loras = self._lora_stamps
        missing = [p for p in dict.fromkeys(prompts) if (p, key_loras) not in self._prompt_cache]
        for p in missing if self.loaded.vocabulary else ():  # words the model never learnt: one notice
            self.loaded.vocabulary.notice(p, self.loaded.name)
        if missing:
            import torch

            with torch.no_grad():
                encoded = self.family.encode_prompts(self.pipe, missing)
            self.encoder_calls += len(missing)
            for p, e in zip(missing, encoded):
                self._prompt_cache[(p, key_loras)] = e
        embeds = [self._prompt_cache[(p, key_loras)] for p in prompts]
        return self.same_length(embeds)

    def same_length(self, embeds: list[PromptEmbeds]) -> list[PromptEmbeds]:
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
        if name:
            self.pipe.scheduler = make_scheduler(name, self._base_scheduler_config)
        elif type(self.pipe.scheduler) is not self._base_scheduler_class:
            self.pipe.scheduler = self._base_scheduler_class.from_config(self._base_scheduler_config)

    def resolve_loras(self, config: GenerateConfig) -> tuple[str, list[LoraSpec]]:
        prompt, tags = extract_lora_tags(config.prompt)
        # a tag in a region prompt acts on the whole picture, as in A1111; a story's region prompts
        # repeat the scene prompt's tags, and those apply once
        for region in config.regions:
            tags += [t for t in extract_lora_tags(region.prompt)[1] if t not in tags]
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
        total = sum(job.steps for job in jobs)
        results: list[ImageResult] = []
        done = 0
        i = 0
        while i < len(jobs):
            group = [jobs[i]]
            while (len(group) < batch_size and i + len(group) < len(jobs)
                   and jobs[i + len(group)].batch_key() == group[0].batch_key()):
                group.append(jobs[i + len(group)])
            results += self._render(group, progress, done, total)
            done += sum(job.steps for job in group)
            i += len(group)
        return results

    def _resolve(self, config: GenerateConfig) -> RenderItem:
        d = self.loaded.defaults
        prompt, loras = self.resolve_loras(config)
        return RenderItem(
            config=config, prompt=prompt, loras=tuple(loras),
            seed=config.seed if config.seed is not None else random.randrange(2**32),
            height=config.height or d.height, width=config.width or d.width,
            steps=config.num_inference_steps or d.num_inference_steps,
            guidance=d.guidance_scale if config.guidance_scale is None else config.guidance_scale,
            reference=reference_key(config),
        )

    def _render(self, group: list[RenderItem], progress, done: int, total: int) -> list[ImageResult]:
        first = group[0]
        # 1. LoRAs (from --lora and <lora:...> tags) and the sampler
        self.set_loras(list(first.loras), allow_pickle=first.config.allow_pickle)
        self.set_scheduler(first.config.scheduler)
        # 2. text conditioning, once per distinct prompt; one length for the whole batch
        n = len(group)
        kwargs, regions = self._conditioning(group)
        # 3. references (control maps, init image, mask) and the task's pipeline over the same modules
        refs = prepare_references(first.config, first.width, first.height)
        controlnets = self._controlnets_for(refs)
        pipe = self.derived.pipeline(refs.task, controlnets)
        kwargs.update(refs.call_kwargs(pipe, n, first.height, first.width))
        ip_refs = prepare_ip_references(first.config, first.width, first.height)
        kwargs.update(self.ip_adapter_inputs(ip_refs, pipe, first.guidance, first.height, first.width))
        # 4. denoise
        images = self._denoise(pipe, kwargs, group, refs, controlnets, progress, done, total, regions)
        if refs.mask is not None:
            images = [paste_unmasked(im, refs.init_image, refs.mask, first.config.mask_blur) for im in images]
        # 5. infotext per image
        results = []
        for job, image in zip(group, images):
            params = self._infotext_params(job, refs, ip_refs)
            results.append(ImageResult(image, job.seed, self._infotext(job.prompt, job.config, params), params,
                                       control_images=[c.image for c in refs.controls]))
        return results

    def _conditioning(self, group: list[RenderItem]) -> tuple[dict, Any]:
        """Pipeline arguments of the prompts, and the RegionalConditioning when the items have regional
        prompts (the items of a batch share their regions' areas: `RenderItem.batch_key`)."""
        n, dtype = len(group), self.pipe.unet.dtype
        regions = group[0].config.regions
        region_prompts = [extract_lora_tags(r.prompt)[0] for j in group for r in j.config.regions]  # tags: resolve_loras
        embeds = self.encode([j.prompt for j in group] + [j.config.negative_prompt for j in group] + region_prompts)
        positive, negative = embeds[:n], embeds[n:2 * n]
        if not regions:
            return self.family.call_kwargs(_stack(positive, dtype), _stack(negative, dtype)), None
        import torch

        from loraflow.generate.regional_attention import RegionalConditioning, regional_embeds
        from loraflow.generate.regions import region_masks

        per_item = [embeds[2 * n + i * len(regions): 2 * n + (i + 1) * len(regions)] for i in range(n)]
        pairs = [regional_embeds(positive[i], per_item[i], negative[i]) for i in range(n)]
        scale = self.pipe.vae_scale_factor  # pixels per latent cell
        first = group[0]
        masks = region_masks([r.region for r in regions], first.height // scale, first.width // scale)
        conditioning = RegionalConditioning(torch.from_numpy(masks), positive[0].embeds.shape[1])
        kwargs = self.family.call_kwargs(_stack([p for p, _ in pairs], dtype), _stack([q for _, q in pairs], dtype))
        return kwargs, conditioning

    def _denoise(self, pipe, kwargs: dict, group: list[RenderItem], refs: References, controlnets: tuple[str, ...],
                 progress, done: int, total: int, regions=None) -> list:
        import torch

        first, n = group[0], len(group)
        if denoising_steps(first.steps, refs.strength) == 0:
            # strength 0 (or too small for one step): no denoising, the VAE's reading of the image
            image = vae_round_trip(pipe, refs.init_image, first.height, first.width)
            return [image.copy() for _ in group]

        def on_step(i: int, _steps: int, _latents) -> None:
            if progress:
                progress(done + i * n, total)

        # one CPU generator per image, so a batch equals its items run one by one
        generators = [torch.Generator("cpu").manual_seed(j.seed) for j in group]
        return denoise(self, Denoising(kwargs, first.steps, first.guidance, generators, task=refs.task,
                                       controlnets=controlnets, on_step=on_step, regions=regions))

    def _controlnets_for(self, refs: References) -> tuple[str, ...]:
        """The ControlNet file of each control unit (loaded once per model by `self.derived`)."""
        paths = []
        for k, control in enumerate(refs.controls):
            if not control.unit.model:
                raise ConfigError(f"control {k} ({control.unit.type}) has no ControlNet weights: pass --controlnet PATH "
                                  "(one per --control, same order)")
            paths.append(control.unit.model)
        return tuple(paths)

    def controlnet_label(self, path: str | None) -> str:
        """`name [hash]` as A1111's ControlNet extension shows a model."""
        if not path:
            return "None"
        if path not in self._controlnet_labels:
            from loraflow.generate.control.model import controlnet_hash, controlnet_name  # imports diffusers

            self._controlnet_labels[path] = f"{controlnet_name(path)} [{controlnet_hash(path)}]"
        return self._controlnet_labels[path]

    def ip_adapter_inputs(self, refs: PreparedReferences | None, pipe, guidance: float, height: int,
                          width: int) -> dict:
        """Attach the references' IP-Adapter (detach it when no reference has a scale above 0: such a
        run is the base model's) and return the pipeline arguments (the same for any batch size)."""
        if refs is None or not refs.active:
            self.ip_adapter.use(None)
            return {}
        if not accepts(pipe, "ip_adapter_image_embeds"):
            raise ConfigError(f"reference: {type(pipe).__name__} takes no IP-Adapter references")
        self.ip_adapter.use(locate_ip_adapter(refs.adapter, self.family, refs.image_encoder), refs.allow_pickle)
        # the pipelines' own rule for classifier-free guidance (which halves the embeds carry)
        cfg = guidance > 1 and self.pipe.unet.config.time_cond_proj_dim is None
        return ip_adapter_kwargs(self.ip_adapter, refs, cfg, height, width)

    def ip_adapter_label(self, path: str) -> str:
        """`name [hash]` of an IP-Adapter file, as A1111's ControlNet extension shows a model."""
        key = f"ip-adapter:{path}"
        if key not in self._controlnet_labels:
            weights = locate_ip_adapter(path, self.family).weights
            self._controlnet_labels[key] = f"{weights.stem} [{hashing.legacy_model_hash(weights)}]"
        return self._controlnet_labels[key]

    # ---- infotext -----------------------------------------------------------------------------
    def _infotext_params(self, job: RenderItem, refs: References | None = None,
                         ip_refs: PreparedReferences | None = None) -> dict:
        params: dict[str, Any] = {
            "Steps": job.steps, **infotext_fields(job.config.scheduler, self.pipe.scheduler),
            "CFG scale": job.guidance, "Seed": job.seed, "Size": f"{job.width}x{job.height}",
        }
        if self.loaded.path is not None:
            params["Model hash"] = self.model_hash()
        params["Model"] = self.loaded.name
        if "vae" in self.loaded.extras:
            params["VAE"] = self.loaded.extras["vae"]
        if refs is not None:
            params.update(reference_params(refs, job.config, job.width, job.height, self.controlnet_label))
        if ip_refs is not None and ip_refs.active:
            params.update(ip_reference_params(ip_refs, self.ip_adapter_label(ip_refs.adapter)))
        if self._loras:
            params["Lora hashes"] = {l.name: self.lora_hash(l) for l in self._loras}
        if job.config.regions:  # A1111 has no key for these; JSON so a reader gets them back exactly
            params["Regions"] = json.dumps([r.model_dump() for r in job.config.regions], ensure_ascii=False)
        params["Version"] = f"loraflow {__version__}"
        return params

    def _infotext(self, prompt: str, config: GenerateConfig, params: dict) -> str:
        # A1111 keeps <lora:...> tags in the saved prompt; so do we, so a re-run applies them again.
        shown = config.prompt if "<lora:" in config.prompt else prompt
        extra = "".join(f" <lora:{l.name}:{l.weight:g}>" for l in self._loras
                        if f"<lora:{l.name}:" not in shown and f"<lora:{l.name}>" not in shown)
        return format_infotext(shown + extra, config.negative_prompt, params)

    def model_hash(self) -> str:
        if self._model_hash is None:
            self._model_hash = hashing.model_hash(self.loaded.path)
        return self._model_hash

    def lora_hash(self, lora: LoraSpec) -> str:
        key = (str(lora.path), *hashing.file_stamp(lora.path))  # the file's content, whatever the weight
        if key not in self._lora_hashes:
            self._lora_hashes[key] = hashing.lora_hash(lora.path)
        return self._lora_hashes[key]


def reference_key(config: GenerateConfig) -> tuple:
    """What must match for two items to share a batch: the same references, drawn the same way."""
    return (tuple(u.model_dump_json() for u in config.control), config.guess_mode, config.canny_low_threshold,
            config.canny_high_threshold, config.annotator_dir, config.init_image, config.strength, config.mask,
            config.mask_blur, ip_reference_key(config))


def _stack(embeds: list[PromptEmbeds], dtype) -> PromptEmbeds:
    import torch

    pooled = None if embeds[0].pooled is None else torch.cat([e.pooled for e in embeds]).to(dtype)
    return PromptEmbeds(torch.cat([e.embeds for e in embeds]).to(dtype), pooled)


def save_results(results: list[ImageResult], out_dir: str | Path, stem: str | None = None) -> list[Path]:
    """Write PNGs with the A1111 `parameters` chunk, numbered like A1111 (`00012-1234.png`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = next_index(out)
    paths = []
    for k, r in enumerate(results):
        name = f"{stem}.png" if stem and len(results) == 1 else f"{index + k:05d}-{r.seed}.png"
        r.path = save_png_with_infotext(r.image, out / name, r.infotext)
        paths.append(r.path)
        for j, control in enumerate(r.control_images):  # 00012-1234.control0.png: what steered it
            atomic_save_image(control, r.path.with_name(f"{r.path.stem}.control{j}.png"))
    return paths


def next_index(folder: Path) -> int:
    numbers = [int(p.name[:5]) for p in folder.glob("[0-9][0-9][0-9][0-9][0-9]-*.png")]
    return max(numbers, default=-1) + 1

