"""Load an A1111/Civitai-style single-file checkpoint (SD1.5 / SDXL) as a diffusers pipeline, offline.

A single `.safetensors` file holds the weights in the *original* key layout (CompVis LDM for SD1.5,
Stability SGM for SDXL) but no configs and no tokenizer. The configs of the real base models
(stable-diffusion-v1-5, stable-diffusion-xl-base-1.0) are shipped in `configs/<family>/`, and the
CLIP BPE merges in `configs/clip/` (from open_clip, MIT), so nothing is ever fetched from a hub.

    family = detect_checkpoint_family("dreamshaper.safetensors")    # header only: "sd15"
    pipe = load_single_file("dreamshaper.safetensors", family, dtype=torch.float16)

Each component is converted by diffusers' own single-file converters (`from_single_file` of the
UNet/VAE, `create_diffusers_clip_model_from_ldm` of the text encoders). We do not call the pipeline-level
`StableDiffusionXLPipeline.from_single_file`: it cannot take a state dict (needed for `--allow-pickle`
files), it tells SDXL's two CLIP encoders apart by their width (ambiguous when both are equally wide),
and it leaves missing weights silently on the `meta` device. Here every text encoder gets only the
keys under its own prefix, and a missing or misshapen weight is a one-line `ModelLoadError`.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from loraflow.errors import ModelLoadError
from loraflow.models.clip_bpe import clip_tokenizer
from loraflow.models.families import FAMILIES, RECOGNISED, ModelFamily, get_family
from loraflow.models.families.base import CONFIG_ROOT, LDM_UNET, LDM_VAE  # noqa: F401  (CONFIG_ROOT: part of this API)
from loraflow.models.pickle_files import PICKLE_SUFFIXES
from loraflow.models.pickle_files import load_pickle_state_dict as _load_pickle

SAFETENSORS_SUFFIX = ".safetensors"
UNET, VAE = LDM_UNET, LDM_VAE  # key prefixes every original checkpoint shares; the families' layouts add theirs
LORA_MARKERS = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_", ".lokr_w1")


# ---- reading ---------------------------------------------------------------------------------
def read_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a `.safetensors` file, from its JSON header alone (no tensor is read).

    Checks the file is complete: a download cut short fails here, naming both sizes."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))  # format: u64 header length, JSON header, raw data
            if n > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise ModelLoadError(f"{path}: not a readable .safetensors file ({e.__class__.__name__}: {e})") from None
    header.pop("__metadata__", None)
    needed = 8 + n + max((t["data_offsets"][1] for t in header.values()), default=0)
    size = path.stat().st_size
    if size < needed:
        raise ModelLoadError(
            f"{path}: file is truncated ({size:,} of {needed:,} bytes); the download or copy did not finish"
        )
    return {key: tuple(t["shape"]) for key, t in header.items()}


def _refuse_pickle(path: Path) -> None:
    raise ModelLoadError(
        f"refusing to unpickle {path.name} (pickle files can run code); "
        "convert it to .safetensors or pass --allow-pickle if you trust it"
    )


def _check_suffix(path: Path, allow_pickle: bool) -> None:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        _refuse_pickle(path)
    if suffix != SAFETENSORS_SUFFIX and suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path}: expected a .safetensors checkpoint (or {'/'.join(PICKLE_SUFFIXES)} with --allow-pickle)"
        )
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")


def _shapes(path: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return read_header(path)
    return {k: tuple(v.shape) for k, v in _load_pickle(path).items()}


# ---- detection -------------------------------------------------------------------------------
def detect_checkpoint_family(path: str | Path, *, allow_pickle: bool = False) -> str | None:
    """`"sd15"` or `"sdxl"` from a checkpoint's key names and shapes, `None` when it cannot tell.

    Only the safetensors header is read. Checkpoints loraflow cannot use as a base model (SD 2.x, the
    SDXL refiner, inpainting UNets, LoRAs, VAEs, UNet-only files) raise a `ModelLoadError` saying what
    the file is and what to do with it instead."""
    path = Path(path)
    _check_suffix(path, allow_pickle)
    return classify_keys(_shapes(path, allow_pickle), path.name)


def classify_keys(shapes: dict[str, tuple[int, ...]], name: str = "checkpoint") -> str | None:
    """The rules of `detect_checkpoint_family`, on a key -> shape mapping. Each family says whether
    the keys are its own (`checkpoint_markers`, `cross_attention_dim`), in registry order."""
    keys = list(shapes)

    if any(m in k for k in keys for m in LORA_MARKERS):
        raise ModelLoadError(f"{name} is a LoRA, not a base model; pass it with --lora (and a base model with --model)")
    for fam in RECOGNISED:
        refusal = fam.checkpoint_refusal(shapes)
        if refusal:
            raise ModelLoadError(f"{name} is {refusal}")
        if not fam.supported and fam.matches_checkpoint(shapes):
            raise ModelLoadError(f"{name} is a {fam.title} checkpoint, which is not supported; use {_loadable_titles()}")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise ModelLoadError(
            f"{name} has a {conv_in[1]}-channel UNet input (an inpainting or instruct-pix2pix model), "
            "which is not supported; use a text-to-image checkpoint"
        )
    for fam in FAMILIES.values():
        if fam.single_file_layout and fam.matches_checkpoint(shapes):
            return fam.name
    if any(k.startswith(UNET) for k in keys):  # no text encoder: tell the family from the UNet's cross-attention width
        fam = _family_from_cross_attention(shapes)
        if fam is not None and not fam.supported:
            raise ModelLoadError(f"{name} is a {fam.title} UNet, which is not supported; use {_loadable_titles()}")
        return fam.name if fam is not None else None
    if any(k.startswith(VAE) for k in keys) or any(k.startswith(("encoder.down", "decoder.up")) for k in keys):
        raise ModelLoadError(f"{name} is a VAE, not a full model; pass it with --vae (and a base model with --model)")
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        raise ModelLoadError(
            f"{name} is a UNet in diffusers layout without VAE and text encoders; "
            "load the complete diffusers folder it came from instead"
        )
    if any(k in ("emb_params", "string_to_param", "clip_l", "clip_g") for k in keys):
        raise ModelLoadError(f"{name} is a textual-inversion embedding, not a model")
    return None


def _loadable_titles() -> str:
    return " or ".join(f.title for f in FAMILIES.values() if f.single_file_layout)


def _family_from_cross_attention(shapes: dict[str, tuple[int, ...]]) -> type[ModelFamily] | None:
    """The family whose UNet attends to text embeddings of this width; only families that load as
    single files (or are recognised-only) compete, so Kolors' SDXL-wide UNet stays SDXL's."""
    for key, shape in shapes.items():
        if key.startswith(UNET) and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return next((f for f in RECOGNISED if (f.single_file_layout or not f.supported)
                         and f.cross_attention_dim == shape[1]), None)
    return None


# ---- configs and tokenizers ------------------------------------------------------------------
def shipped_config_dir(family: str) -> Path:
    """The configs of the real base model of `family`, shipped with loraflow."""
    fam = get_family(family)
    if not fam.single_file_layout:
        loadable = ", ".join(f.name for f in FAMILIES.values() if f.single_file_layout)
        raise ModelLoadError(f"single-file checkpoints of '{family}' are not supported; choose one of: {loadable} "
                             f"({fam.title}: {fam.where_to_get})")
    return fam.config_dir()


def _load_tokenizer(config_dir: Path, subfolder: str):
    """The folder's own tokenizer files when it has them (a diffusers folder), else the shipped BPE
    with the special tokens of the folder's `tokenizer_config.json` (the shipped configs)."""
    from transformers import CLIPTokenizer

    folder = config_dir / subfolder
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    settings = read_json(folder / "tokenizer_config.json")
    return clip_tokenizer(settings.get("pad_token", "<|endoftext|>"), settings.get("model_max_length", 77))


def read_json(path: Path) -> dict:
    """A model folder's JSON file (`model_index.json`, a `config.json`, a shard index, a sidecar);
    unreadable or not JSON: a one-line ModelLoadError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None


def _check_config_dir(config_dir: Path, family: str) -> None:
    fam = get_family(family)
    needed = ["model_index.json", "scheduler/scheduler_config.json"]
    needed += [f"{c}/config.json" for c in fam.single_file_layout]
    needed += [f"{t}/tokenizer_config.json" for t in fam.single_file_tokenizers]
    missing = [n for n in needed if not (config_dir / n).is_file()]
    if missing:
        raise ModelLoadError(
            f"config folder {config_dir} lacks {', '.join(missing)} (a {family} diffusers folder is needed)"
        )


# ---- loading ---------------------------------------------------------------------------------
def load_single_file(
    path: str | Path,
    family: str,
    *,
    dtype=None,
    device: str | None = "cpu",
    allow_pickle: bool = False,
    config_dir: str | Path | None = None,
):
    """A diffusers pipeline of `family` (`StableDiffusionPipeline` / `StableDiffusionXLPipeline`) from
    one original-layout checkpoint. Never touches the network.

    dtype: torch dtype of the weights (None: float32, whatever the file holds); device: where to put it.
    config_dir: a diffusers folder whose configs and tokenizers describe the model (default: the
    shipped configs of the real base model). `.ckpt/.pt/.pth/.bin` files need `allow_pickle=True` and
    are then read with `torch.load(weights_only=True)`."""
    path = Path(path)
    default_dir = shipped_config_dir(family)  # also refuses families without single-file support
    config_dir = Path(config_dir) if config_dir is not None else default_dir
    _check_suffix(path, allow_pickle)
    _check_config_dir(config_dir, family)
    state = _read_state_dict(path, family)
    components: dict[str, Any] = {}
    for name, (prefix, what) in get_family(family).single_file_layout.items():
        part = {k: v for k, v in state.items() if k.startswith(prefix)}
        if not part:
            raise ModelLoadError(
                f"{path.name}: no {what} weights ({prefix}*); the checkpoint is partial or not {family}"
            )
        components[name] = _load_component(name, part, config_dir, dtype, path, family, what)
        _check_no_missing(components[name], name, what, path)
        for key in part:
            state.pop(key)  # free the original tensors once converted
    for name in get_family(family).single_file_tokenizers:
        components[name] = _load_tokenizer(config_dir, name)
    components["scheduler"] = _load_scheduler(config_dir)
    pipe = _assemble(family, components, config_dir)
    if device is not None:
        pipe.to(device)
    return pipe


def _read_state_dict(path: Path, family: str) -> dict[str, Any]:
    """Only the tensors under the family's prefixes (EMA copies and optimizer leftovers are skipped)."""
    prefixes = tuple(prefix for prefix, _ in get_family(family).single_file_layout.values())
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return {k: v for k, v in _load_pickle(path).items() if k.startswith(prefixes)}
    read_header(path)  # a clear error for a truncated file before safetensors' own
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: unreadable safetensors file ({e})") from None


def _load_component(name: str, part: dict, config_dir: Path, dtype, path: Path, family: str, what: str):
    import diffusers
    import transformers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    common = dict(config=str(config_dir), subfolder=name, local_files_only=True, torch_dtype=dtype)
    try:
        if name == "unet":
            return diffusers.UNet2DConditionModel.from_single_file(part, **common)
        if name == "vae":
            return diffusers.AutoencoderKL.from_single_file(part, **common)
        # the config names the class: SDXL's second encoder is CLIPTextModelWithProjection (pooled output)
        architectures = read_json(config_dir / name / "config.json").get("architectures") or ["CLIPTextModel"]
        cls = getattr(transformers, architectures[0])
        return create_diffusers_clip_model_from_ldm(
            cls, checkpoint=part, subfolder=name, config=str(config_dir), torch_dtype=dtype, local_files_only=True
        )
    except (ValueError, KeyError, RuntimeError, IndexError, NotImplementedError) as e:
        if "meta tensor" in str(e):  # a weight absent from the checkpoint stayed on `meta`
            missing = _missing_diffusers_keys(name, part, config_dir)
            raise ModelLoadError(
                f"{path.name}: the {what} ({name}) is incomplete, {len(missing)} weights missing "
                f"(e.g. {missing[0] if missing else '?'}); the file is partial or a different architecture"
            ) from None
        reason = " ".join(str(e).split()).split(". ")[0][:300]  # diffusers appends advice that does not apply
        raise ModelLoadError(
            f"{path.name}: the {name} weights do not fit the {family} config in {config_dir} ({reason}); "
            "the file is another architecture or --family is wrong"
        ) from None


def _missing_diffusers_keys(name: str, part: dict, config_dir: Path) -> list[str]:
    """Names of the UNet/VAE weights the checkpoint lacks (converted as diffusers would, on `meta`)."""
    import diffusers
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    cls, convert = {
        "unet": (diffusers.UNet2DConditionModel, convert_ldm_unet_checkpoint),
        "vae": (diffusers.AutoencoderKL, convert_ldm_vae_checkpoint),
    }[name]
    config = cls.load_config(config_dir, subfolder=name, local_files_only=True)
    with init_empty_weights():
        expected = cls.from_config(config).state_dict()
    try:
        converted = convert(checkpoint=part, config=config)
    except (KeyError, ValueError, IndexError):
        return []
    return sorted(set(expected) - set(converted))


def _check_no_missing(model, name: str, what: str, path: Path) -> None:
    """diffusers' single-file loaders leave weights absent from the checkpoint on the `meta` device."""
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    missing += [n for n, b in model.named_buffers() if b.is_meta]
    if missing:
        raise ModelLoadError(
            f"{path.name}: the {what} ({name}) is incomplete, {len(missing)} weights missing "
            f"(e.g. {missing[0]}); the file is partial or a different architecture"
        )


def _load_scheduler(config_dir: Path):
    import diffusers

    class_name = read_json(config_dir / "scheduler" / "scheduler_config.json").get("_class_name", "")
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ModelLoadError(f"{config_dir}/scheduler: unknown scheduler class '{class_name}'")
    return cls.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True)


def _assemble(family: str, components: dict, config_dir: Path):
    import inspect

    fam = get_family(family)
    pipeline_class = fam.pipeline_class()
    accepted = inspect.signature(pipeline_class.__init__).parameters
    # Plain options of model_index.json (force_zeros_for_empty_prompt, ...); lists name components.
    options = {
        k: v for k, v in read_json(config_dir / "model_index.json").items()
        if not k.startswith("_") and not isinstance(v, list) and k in accepted
    }
    options.update(fam.pipeline_extras)  # e.g. no safety checker: a single file has none
    return pipeline_class(**components, **options)


def load_single_file_vae(path: str | Path, *, family: str, dtype=None, allow_pickle: bool = False):
    """`--vae FILE`: a lone VAE file, in diffusers layout (e.g. sdxl-vae-fp16-fix's
    `diffusion_pytorch_model.safetensors`) or original layout (`encoder.down.0...`, optionally under
    `first_stage_model.`), configured with the shipped VAE config of `family` (Kolors uses SDXL's)."""
    import diffusers

    path = Path(path)
    vae_family = get_family(family).vae_config_folder
    config_dir = shipped_config_dir(vae_family)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        state = _load_pickle(path) if allow_pickle else None
        if state is None:
            raise ModelLoadError(f"refusing to unpickle VAE {path.name}; use .safetensors or pass --allow-pickle")
    else:
        read_header(path)
        from safetensors.torch import load_file

        state = load_file(str(path))
    if any(k.startswith("encoder.down_blocks.") for k in state):  # already diffusers layout
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(config_dir / "vae"))
        missing, unexpected = vae.load_state_dict(state, strict=False)
        if missing or unexpected:
            bad = (missing or unexpected)[0]
            raise ModelLoadError(f"{path.name}: not an {family} VAE ({'missing' if missing else 'unexpected'} weight {bad})")
        return vae.to(dtype=dtype) if dtype is not None else vae
    state = {k.removeprefix(VAE): v for k, v in state.items()}
    return _load_component("vae", state, config_dir, dtype, path, vae_family, "VAE")
