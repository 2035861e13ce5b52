"""IP-Adapter: reference images steer a picture through a second, image-fed cross-attention in every
attn2 block (Ye et al. 2023, "IP-Adapter", arXiv:2308.06721, section 3.2: decoupled cross-attention).

    files = locate_ip_adapter("~/models/IP-Adapter", family)  # adapter file + CLIP image encoder, or one-line error
    slot = IPAdapterSlot(pipe)                                 # one per loaded pipeline (the session's)
    slot.use(files, allow_pickle=False)                        # attach (no-op when already attached)
    embeds = slot.image_embeds(images, cfg=True)               # diffusers' `ip_adapter_image_embeds`
    slot.use(None)                                             # detach: the UNet is the base model's again

Loading is diffusers' `IPAdapterMixin.load_ip_adapter`, handed a state dict and an image encoder read
here from local files only (never downloaded). Where the files lie in a folder is the family's
`IPAdapterLayout` (its hub repository's layout): the plain IP-Adapter and IP-Adapter-Plus (Resampler)
of h94/IP-Adapter for SDXL and SD1.5, Kwai-Kolors/Kolors-IP-Adapter-Plus for Kolors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError, ModelLoadError
from loraflow.models.hashing import file_stamp
from loraflow.models.pickle_files import PICKLE_SUFFIXES, load_pickle_dict

ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # transformers' names, safetensors first


@dataclass(frozen=True)
class IPAdapterFiles:
    weights: Path  # the adapter: image_proj.* and ip_adapter.* tensors
    roots: tuple[Path, ...]  # folders the family's image encoder paths are relative to, nearest first
    image_encoder: Path | None = None  # a transformers CLIP vision folder given explicitly (else searched in roots)

    @property
    def name(self) -> str:
        return self.weights.stem


@dataclass
class LoadedIPAdapter:
    files: IPAdapterFiles
    stamp: tuple  # what identifies the files' content cheaply (size, mtime, inode of each)
    state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}} as diffusers' load_ip_adapter takes it
    image_encoder: Any  # transformers CLIPVisionModelWithProjection
    feature_extractor: Any  # transformers CLIPImageProcessor at the encoder's input size
    encoder_dir: Path


def _family_layout(family):
    if family.ip_adapter is None:
        raise ConfigError(f"{family.title} models take no IP-Adapter here (no reference images)")
    return family.ip_adapter


def _candidates(root: Path, relative: str) -> list[Path]:
    """`sdxl_models/x.safetensors` under `root`, and the bare name for a folder holding just the files."""
    return list(dict.fromkeys([root / relative, root / Path(relative).name]))


def locate_ip_adapter(path: str | Path, family, image_encoder: str | Path | None = None) -> IPAdapterFiles:
    """The adapter file of a folder laid out as the family's hub repository (or the file itself);
    `image_encoder`: its CLIP vision folder when it is not beside the adapter."""
    layout = _family_layout(family)
    p = Path(path).expanduser()
    encoder = Path(image_encoder).expanduser() if image_encoder else None
    if p.is_file():
        return IPAdapterFiles(p, (p.parent, p.parent.parent), encoder)
    if not p.is_dir():
        raise ModelLoadError(f"IP-Adapter not found: {p} (a folder or file laid out as the hub's {layout.hub_id})")
    for name in layout.weight_names:
        for candidate in _candidates(p, name):
            if candidate.is_file():
                return IPAdapterFiles(candidate, (candidate.parent, p), encoder)
    raise ModelLoadError(f"IP-Adapter folder {p} has none of {', '.join(layout.weight_names)} "
                         f"(download them from {layout.hub_id}, or pass the adapter file itself)")


def read_adapter_state_dict(path: Path, allow_pickle: bool = False) -> dict:
    """{"image_proj": {...}, "ip_adapter": {...}} from a .safetensors file (flat `image_proj.` /
    `ip_adapter.` keys, as diffusers reads them) or, when allowed, a weights-only .bin."""
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelLoadError(f"{path}: pickled IP-Adapter weights; pass --allow-pickle to read them "
                                 "(weights_only), or use the .safetensors copy")
        raw = load_pickle_dict(path, "IP-Adapter weights")
        # the original repositories' .bin: {"image_proj": {...}, "ip_adapter": {...}} (torch.save of two state dicts)
        if all(isinstance(raw.get(k), dict) for k in ("image_proj", "ip_adapter")):
            return {"image_proj": dict(raw["image_proj"]), "ip_adapter": dict(raw["ip_adapter"])}
        flat = raw
    else:
        from safetensors.torch import load_file

        try:
            flat = load_file(path)
        except Exception as e:  # a truncated or foreign file
            raise ModelLoadError(f"{path}: not a readable .safetensors file ({e.__class__.__name__})") from None
    state = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in state:
            state[head][rest] = value
    if not state["image_proj"] or not state["ip_adapter"]:
        raise ModelLoadError(f"{path}: no image_proj.* and ip_adapter.* weights; not an IP-Adapter")
    return state


def image_embed_width(state: dict, name: str = "IP-Adapter") -> tuple[str, int]:
    """What the adapter reads from the image encoder and how wide it is: the projected image embedding
    (plain IP-Adapter: `proj.weight` (4 * cross_dim, width)) or the penultimate hidden states
    (Plus: the Resampler's `proj_in.weight` (dim, width)). `name`: the file, for the error."""
    proj = state["image_proj"]
    if "proj.weight" in proj:
        return "image_embeds", int(proj["proj.weight"].shape[-1])
    if "proj_in.weight" in proj:
        return "hidden_states", int(proj["proj_in.weight"].shape[-1])
    raise ModelLoadError(f"{name}: IP-Adapter kind not supported here (only the plain and Plus adapters; "
                         "FaceID and Full-face ones are not)")


def find_image_encoder(files: IPAdapterFiles, family, state: dict) -> Path:
    """The first image encoder folder of the family's layout whose output width fits the adapter."""
    layout = _family_layout(family)
    kind, width = image_embed_width(state, files.weights.name)
    tried, misfits = [], []
    nested = [[files.image_encoder]] if files.image_encoder else [
        _candidates(root, relative) for root in files.roots for relative in layout.image_encoders]
    for folder in dict.fromkeys(f for folders in nested for f in folders):
        tried.append(folder)
        config = folder / "config.json"
        if not config.is_file() or not any((folder / w).is_file() for w in ENCODER_WEIGHTS):
            continue
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # a cut-short download or another file under that name
            raise ModelLoadError(f"{config}: not a readable config.json ({e.__class__.__name__})") from None
        got = cfg.get("projection_dim") if kind == "image_embeds" else cfg.get("hidden_size")
        if got == width:
            return folder
        misfits.append(f"{folder} ({got})")
    if misfits:
        raise ModelLoadError(f"IP-Adapter {files.weights.name} needs an image encoder with {kind} of width {width}; "
                             f"found only {', '.join(misfits)} (it comes with {layout.hub_id})")
    raise ModelLoadError(
        f"IP-Adapter {files.weights.name}: image encoder ({layout.image_encoder_title}) missing: none of "
        f"{', '.join(str(f) for f in tried)} holds config.json and {' or '.join(ENCODER_WEIGHTS)} "
        f"(download it from {layout.hub_id})")


def load_ip_adapter_files(files: IPAdapterFiles, family, *, dtype, device, allow_pickle: bool = False) -> LoadedIPAdapter:
    """Read the adapter and its image encoder (local files only) onto `device` in `dtype`."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    state = read_adapter_state_dict(files.weights, allow_pickle)
    encoder_dir = find_image_encoder(files, family, state)
    safetensors = (encoder_dir / ENCODER_WEIGHTS[0]).is_file()
    if not safetensors and not allow_pickle:
        raise ModelLoadError(f"{encoder_dir}: the image encoder is pickled ({ENCODER_WEIGHTS[1]}); pass "
                             "--allow-pickle to read it (weights_only), or convert it to model.safetensors")
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            encoder_dir, local_files_only=True, use_safetensors=safetensors, dtype=dtype).to(device).eval()
    except Exception as e:  # a truncated or foreign file: transformers' and safetensors' errors have no common base
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ModelLoadError(f"{encoder_dir}: cannot load the IP-Adapter's image encoder "
                             f"({e.__class__.__name__}: {first})") from None
    size = encoder.config.image_size  # 224 for ViT-H/bigG, 336 for Kolors' ViT-L/14-336
    if (encoder_dir / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(encoder_dir, local_files_only=True)
    else:  # h94/IP-Adapter's encoders ship none: diffusers' load_ip_adapter builds this one
        processor = CLIPImageProcessor(size=size, crop_size=size)
    return LoadedIPAdapter(files, (str(files.weights), *file_stamp(files.weights), *file_stamp(encoder_dir)),
                           state, encoder, processor, encoder_dir)


class IPAdapterSlot:
    """The IP-Adapter attached to one pipeline's UNet: at most one at a time, read from disk once and
    kept (the last one used; its image encoder on the CPU while detached) so a story that alternates
    panels with and without references reattaches it without reading the files again."""

    def __init__(self, pipe, family):
        self.pipe = pipe
        self.family = family
        self.attached: LoadedIPAdapter | None = None
        self._kept: LoadedIPAdapter | None = None
        self._feature_extractor = None  # the pipeline's own (SD1.5's safety checker input), put back on detach

    def use(self, files: IPAdapterFiles | None, allow_pickle: bool = False) -> LoadedIPAdapter | None:
        """Attach the adapter of `files` (None: detach); a no-op when it is attached and unchanged on disk."""
        if files is None:
            self._detach()
            return None
        if self.pipe.unet.device.type == "meta":
            # sequential offload keeps the UNet's weights on "meta" between layers; an adapter and encoder
            # moved to its device would lose theirs, and diffusers' loader does not hook new layers
            raise ConfigError("reference: IP-Adapter references do not work with --offload sequential; "
                              "use --offload model (or encoders, or none)")
        kept = self._kept
        if kept is None or kept.files != files or kept.stamp[1:] != self._stamp(kept):
            self._detach()
            self._kept = None  # let go of the old weights before reading the new ones
            unet = self.pipe.unet
            self._kept = load_ip_adapter_files(files, self.family, dtype=unet.dtype, device=unet.device,
                                               allow_pickle=allow_pickle)
        if self.attached is not self._kept:
            self._detach()
            self._attach(self._kept)
        return self.attached

    @staticmethod
    def _stamp(adapter: LoadedIPAdapter) -> tuple:
        return (*file_stamp(adapter.files.weights), *file_stamp(adapter.encoder_dir))

    def _attach(self, adapter: LoadedIPAdapter) -> None:
        pipe = self.pipe
        adapter.image_encoder.to(pipe.unet.device)  # kept on the CPU while detached
        self._feature_extractor = getattr(pipe, "feature_extractor", None)
        # registered first, so load_ip_adapter neither loads an encoder nor builds a processor itself
        pipe.register_modules(image_encoder=adapter.image_encoder, feature_extractor=adapter.feature_extractor)
        try:
            pipe.load_ip_adapter(adapter.state_dict, subfolder=None, weight_name=None, image_encoder_folder=None)
        except (RuntimeError, ValueError, KeyError) as e:  # shapes or block count of another model
            self.attached = adapter  # so that _detach puts the UNet back
            self._detach()
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise ModelLoadError(f"IP-Adapter {adapter.files.weights.name} does not fit this {self.family.title} "
                                 f"model ({e.__class__.__name__}: {first})") from None
        self.attached = adapter

    def _detach(self) -> None:
        if self.attached is None:
            return
        pipe, unet = self.pipe, self.pipe.unet
        pipe.unload_ip_adapter()
        # diffusers keeps Kolors' text projection aside only while `text_encoder_hid_proj` is absent
        # (loaders/unet.py `_load_ip_adapter_weights`); unload leaves it as None, so a second load would
        # lose the projection. Removing the empty attribute makes the next load keep it again.
        if hasattr(unet, "text_encoder_hid_proj") and unet.text_encoder_hid_proj is None:
            del unet.text_encoder_hid_proj
        pipe.register_modules(image_encoder=None, feature_extractor=self._feature_extractor)
        self.attached.image_encoder.to("cpu")  # kept for a later run, off the accelerator
        self.attached = None

    def image_embeds(self, images: list, cfg: bool) -> list:
        """`ip_adapter_image_embeds` of one prompt: [(2 or 1, len(images), ...)], the unconditional
        row first under classifier-free guidance. One prompt's, whatever the batch: the pipelines
        repeat them by their own batch size (`prepare_ip_adapter_image_embeds`)."""
        import torch

        if self.attached is None:
            raise ConfigError("no IP-Adapter attached")
        with torch.no_grad():
            return self.pipe.prepare_ip_adapter_image_embeds([images], None, self.pipe.unet.device, 1, cfg)
