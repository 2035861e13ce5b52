"""Load a base model as a diffusers pipeline, from whatever the user points at.

`model` may be
* `demo` (also what no model means) — the small shapes model loraflow trained itself, shipped
  in the package (`loraflow demo train`); 64 px, for trying every command without downloads,
* `tiny:<family>` (`TINY_MODELS`: one per registered family) — the in-process tiny model (tests, quick start),
* a diffusers folder (`model_index.json` + component folders),
* a single-file `.safetensors` checkpoint (A1111/Civitai style, of a family with a single-file layout),
* a `.ckpt/.pt/.bin` file — refused unless `allow_pickle=True` (then `weights_only=True`).

Nothing is ever downloaded here; `loraflow models download` is the explicit way to fetch.
Every failure is a one-line `ModelLoadError` naming the file and where such weights come from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError, ModelLoadError
from loraflow.models.families import FAMILIES, TINY_MODELS, ModelFamily, get_family
from loraflow.models.families.base import FamilyDefaults
from loraflow.models.pickle_files import PICKLE_SUFFIXES
from loraflow.models.single_file import detect_checkpoint_family, load_single_file, load_single_file_vae, read_json
from loraflow.models.tiny import build_tiny_pipeline
from loraflow.models.vocabulary import Vocabulary

WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers / transformers weight file stems
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEMO = "demo"
BUILTIN_MODELS = (DEMO, *TINY_MODELS)
DEFAULTS_FILE = "loraflow.json"  # optional, in a model folder: {"label": ..., "defaults": {"height": 64, ...}}


@dataclass
class LoadedModel:
    pipe: Any  # a diffusers pipeline of `family`
    family: type[ModelFamily]
    name: str  # short name shown in infotext (`Model: ...`)
    source: str  # what the user passed
    path: Path | None = None  # file/folder on disk (None for tiny models)
    extras: dict = field(default_factory=dict)
    defaults: FamilyDefaults | None = None  # size/steps/guidance when not given; the family's unless the folder says
    vocabulary: Vocabulary | None = None  # the words it was trained on, when the folder declares them (demo)

    def __post_init__(self):
        if self.defaults is None:
            self.defaults = model_defaults(self.path, self.family)
        if self.vocabulary is None:
            self.vocabulary = Vocabulary.from_model_dir(self.path)


def model_defaults(path: Path | None, family: type[ModelFamily]) -> FamilyDefaults:
    """The family's defaults, overridden by `loraflow.json` in a model folder (the demo model: 64 px)."""
    import dataclasses

    sidecar = path / DEFAULTS_FILE if path is not None and path.is_dir() else None
    if sidecar is None or not sidecar.is_file():
        return family.defaults
    given = read_json(sidecar).get("defaults", {})
    known = {f.name for f in dataclasses.fields(FamilyDefaults)}
    return dataclasses.replace(family.defaults, **{k: v for k, v in given.items() if k in known})


def demo_model_dir() -> Path:
    """The demo model's folder inside the package (weights committed with the recipe that made them)."""
    folder = Path(__file__).resolve().parent.parent / "demo" / "weights"
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"the demo model is missing from this install ({folder}); "
                             "rebuild it with `loraflow demo train --out DIR` and pass --model DIR")
    return folder


def peek_defaults(model: str | None, family: str | None = None) -> FamilyDefaults:
    """A model's default size/steps/guidance without loading its weights (config files only)."""
    model = model or DEMO
    if model.startswith("tiny:"):
        return get_family(family or model.split(":", 1)[1]).defaults
    path = demo_model_dir() if model == DEMO else Path(model).expanduser()
    if path.is_dir():
        return model_defaults(path, get_family(family or detect_folder_family(path) or _unknown_family(path)))
    if family:
        return get_family(family).defaults
    if path.suffix.lower() == ".safetensors" and path.is_file():
        return get_family(detect_checkpoint_family(path) or _unknown_family(path)).defaults
    raise ModelLoadError(f"model not found: {model}")


def vae_dtype(vae_config, weight_dtype: str) -> str:
    """The dtype the VAE encodes in: the SDXL VAE overflows in fp16 (force_upcast; use
    sdxl-vae-fp16-fix to avoid), so it is kept in fp32 there."""
    return "float32" if vae_config.get("force_upcast", False) and weight_dtype == "float16" else weight_dtype


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def resolve_device(device: str | None) -> str:
    """`auto` -> cuda when available, else cpu; a named device must exist on this machine (running
    a `--device cuda` job on the CPU without a word would take hours instead of minutes)."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{device}': CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use --device cpu or auto")
        if index and int(index) >= count:
            raise ConfigError(f"device '{device}': this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device '{device}': Apple MPS is not available on this machine; use --device cpu or auto")
    elif kind in ("xpu", "npu") and not (getattr(torch, kind, None) and getattr(torch, kind).is_available()):
        raise ConfigError(f"device '{device}': {kind} is not available on this machine; use --device cpu or auto")
    return device


def load_pipeline(
    model: str | None,
    *,
    family: str | None = None,
    vae: str | None = None,
    dtype: str = "auto",
    device: str | None = "auto",
    allow_pickle: bool = False,
    skip: tuple[str, ...] = (),
) -> LoadedModel:
    """`skip`: pipeline components left unloaded (None), e.g. ("vae", "text_encoder") when cached
    latents and embeddings stand in for them; names the pipeline does not have are ignored. Folders
    never read the skipped weights; tiny and single-file models build them, then drop them."""
    if not model:
        import sys

        print("loraflow: no --model given, using the built-in demo model (64 px coloured shapes, for trying "
              "loraflow; pass --model for a real one)", file=sys.stderr)
        model = DEMO
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    loaded = _load(model, family, torch_dtype, allow_pickle, skip)
    for name in skip:
        if getattr(loaded.pipe, name, None) is not None:
            setattr(loaded.pipe, name, None)
    if vae and "vae" not in skip:
        loaded.pipe.vae = load_vae(vae, torch_dtype, allow_pickle, family=loaded.family.name)
        loaded.extras["vae"] = Path(vae).name
    loaded.pipe.to(device)
    loaded.pipe.set_progress_bar_config(disable=True)
    return loaded


def _load(model: str, family: str | None, torch_dtype, allow_pickle: bool, skip: tuple[str, ...] = ()) -> LoadedModel:
    if model == DEMO:
        loaded = _load_folder(demo_model_dir(), family, torch_dtype, allow_pickle, skip)
        loaded.name, loaded.source = "loraflow-demo", DEMO
        return loaded
    if model.startswith("tiny:"):
        fam = get_family(model.split(":", 1)[1])
        if family and family != fam.name:
            raise ModelLoadError(f"--family {family} contradicts --model {model}")
        pipe = build_tiny_pipeline(fam.name)
        if torch_dtype != pipe.unet.dtype:
            pipe = pipe.to(dtype=torch_dtype)
        return LoadedModel(pipe, fam, f"loraflow-tiny-{fam.name}", model)
    path = Path(model).expanduser()
    if not path.exists():
        hint = (
            f"; to fetch it from a hub run `loraflow models download {model}` and pass the folder"
            if "/" in model and not model.startswith((".", "/")) else ""
        )
        raise ModelLoadError(f"model not found: {model}{hint}")
    if path.is_dir():
        return _load_folder(path, family, torch_dtype, allow_pickle, skip)
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"refusing to unpickle {path.name} (pickle files can run code); "
            "convert it to .safetensors or pass --allow-pickle if you trust it"
        )
    if path.suffix.lower() not in (".safetensors",) + PICKLE_SUFFIXES:
        raise ModelLoadError(f"{path}: not a model folder or a .safetensors checkpoint")
    fam = get_family(family or detect_checkpoint_family(path, allow_pickle=allow_pickle) or _unknown_family(path))
    pipe = load_single_file(path, fam.name, dtype=torch_dtype, device="cpu", allow_pickle=allow_pickle)
    return LoadedModel(pipe, fam, path.stem, model, path)


def _unknown_family(path: Path) -> str:
    raise ModelLoadError(f"cannot tell the model family of {path.name}; pass --family {'|'.join(FAMILIES)}")


def detect_folder_family(path: Path) -> str | None:
    """Family of a diffusers folder: the first family (registry order) that its model_index.json
    and component configs declare, else the first whose UNet config fits."""

    def config(component: str) -> dict:
        file = path / component / "config.json"
        return read_json(file) if file.is_file() else {}

    index = read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    for fam in FAMILIES.values():
        if fam.matches_folder(index, config):
            return fam.name
    if (path / "unet" / "config.json").is_file():
        unet = config("unet")
        for fam in FAMILIES.values():
            if fam.matches_unet_config(unet):
                return fam.name
    return None


def check_folder(path: Path, fam: type[ModelFamily], allow_pickle: bool) -> None:
    """Fail early, naming the missing file, instead of deep inside from_pretrained."""
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path}: no model_index.json, so not a diffusers model folder; {fam.where_to_get}")
    index = read_json(path / "model_index.json")
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = path / name
        if not folder.is_dir():
            raise ModelLoadError(f"{folder}: missing component folder '{name}'; {fam.where_to_get}")
        if name in ("unet", "vae") or name.startswith("text_encoder"):
            _check_weights(folder, fam, allow_pickle)


def _check_weights(folder: Path, fam: type[ModelFamily], allow_pickle: bool) -> None:
    files = [p.name for p in folder.iterdir()]
    if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES) or f.endswith(".bin.index.json")]
        if pickled and not allow_pickle:
            raise ModelLoadError(
                f"{folder}: only pickle weights ({pickled[0]}); convert to safetensors or pass --allow-pickle"
            )
        if not pickled:
            raise ModelLoadError(
                f"{folder}: no weights file (expected diffusion_pytorch_model.safetensors or model.safetensors); "
                f"{fam.where_to_get}"
            )
    index = next((folder / f for f in files if f.endswith(".index.json")), None)
    if index is not None:  # sharded: every shard must be there
        shards = set(read_json(index).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelLoadError(f"{folder}: missing weight shard {missing[0]} (of {len(shards)}); {fam.where_to_get}")


def _load_folder(path: Path, family: str | None, torch_dtype, allow_pickle: bool,
                 skip: tuple[str, ...] = ()) -> LoadedModel:
    fam = get_family(family or detect_folder_family(path) or _unknown_family(path))
    check_folder(path, fam, allow_pickle)
    index = read_json(path / "model_index.json")
    overrides: dict[str, Any] = {name: None for name in skip if name in index}  # diffusers: None = not loaded
    overrides.update(fam.folder_components(path, torch_dtype, _safetensors_flag(allow_pickle), tuple(overrides)))
    try:
        pipe = fam.pipeline_class().from_pretrained(
            path, torch_dtype=torch_dtype, use_safetensors=_safetensors_flag(allow_pickle), local_files_only=True, **overrides
        )
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: cannot load as {fam.name}: {first}") from None
    return LoadedModel(pipe, fam, path.name, str(path), path)


def load_vae(vae: str, torch_dtype, allow_pickle: bool = False, *, family: str):
    """`--vae`: a diffusers VAE folder, or a .safetensors file (diffusers or original layout, configured
    as `family`'s VAE)."""
    from diffusers import AutoencoderKL

    path = Path(vae).expanduser()
    if not path.exists():
        raise ModelLoadError(f"VAE not found: {vae} (e.g. the folder of madebyollin/sdxl-vae-fp16-fix)")
    if path.is_dir() or (path.parent / "config.json").is_file():
        folder = path if path.is_dir() else path.parent
        return AutoencoderKL.from_pretrained(folder, torch_dtype=torch_dtype, use_safetensors=_safetensors_flag(allow_pickle))
    return load_single_file_vae(path, family=family, dtype=torch_dtype, allow_pickle=allow_pickle)


def _safetensors_flag(allow_pickle: bool) -> bool | None:
    """True: safetensors only. None: prefer safetensors, fall back to .bin (loaded weights_only)."""
    return None if allow_pickle else True
