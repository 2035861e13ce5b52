"""Disk caches of VAE latents and text embeddings, so frozen encoders run once per input.

Keys are content hashes: the image file's SHA-256 + bucket/crop/flip + a fingerprint of the VAE
weights and dtype; the caption text + a fingerprint of the text encoders. Anything that changes
one of those gives a new key, so a stale entry is never read, and a second run over the same
data and model re-encodes nothing. Entries are single safetensors files written atomically.
Fingerprints are taken from the weight files on disk when the model is a folder
(`file_fingerprint`), so a second run can find its entries without loading the encoders at all;
from the built modules otherwise (`module_fingerprint`: tiny and single-file models).

We cache the VAE posterior (mean and log-variance, as diffusers' `DiagonalGaussianDistribution`
keeps them) rather than one sample, so every step still draws a fresh latent sample.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loraflow.errors import LoraflowError
from loraflow.train.buckets import Crop
from loraflow.atomic import atomic_save_safetensors
from loraflow.train.images import load_pixels


def module_fingerprint(*modules) -> str:
    """Cheap identity of frozen weights: names, shapes, dtypes and the first/last values of
    every tensor (hashing a 12 GB encoder in full would cost more than encoding a small dataset)."""
    import torch

    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            head = torch.cat([flat[:64], flat[-64:]]).float().cpu()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(head.numpy().tobytes())
    return digest.hexdigest()[:16]


def file_fingerprint(*files: Path) -> str:
    """`module_fingerprint` of weights still on disk: every safetensors tensor's name, shape, dtype
    and first/last bytes, read by seeking (nothing is loaded); other files (configs) in full.
    Raises ValueError/OSError for a file that is not readable safetensors."""
    import struct

    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.parent.name}/{path.name}".encode())
        with open(path, "rb") as f:
            if path.suffix != ".safetensors":
                digest.update(f.read())
                continue
            # layout: u64 little-endian header size, JSON header {name: {dtype, shape, data_offsets}}, data
            try:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            except (struct.error, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: not a safetensors file ({e})") from None
            for name in sorted(k for k in header if k != "__metadata__"):
                info = header[name]
                begin, end = info["data_offsets"]
                digest.update(f"{name}{info['shape']}{info['dtype']}".encode())
                for at in (begin, max(begin, end - 256)):
                    f.seek(8 + size + at)
                    digest.update(f.read(min(256, end - begin)))
    return digest.hexdigest()[:16]


def escape_caption(text: str) -> str:
    """Captions are plain text: escape A1111 weighting syntax so `(smile)` is not a weight."""
    for ch in "\\()[]":
        text = text.replace(ch, "\\" + ch)
    return text


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _load(path: Path) -> dict | None:
    from safetensors.torch import load_file

    try:
        return load_file(path) if path.is_file() else None
    except Exception:  # a foreign or damaged file: treat as a miss and overwrite it
        return None


class LatentStore:
    """VAE posterior parameters (2C, h, w) per (image content, crop, flip, VAE). `vae` may stay None
    while every entry read is on disk; `vae_config` (scaling/shift factors) is needed either way."""

    def __init__(self, root: Path | None, vae_key: str, vae_config, vae=None):
        self.vae, self.root, self.vae_key = vae, root, vae_key
        self.scaling = vae_config["scaling_factor"]
        self.shift = vae_config.get("shift_factor") or 0.0
        self.encode_calls = 0  # VAE forward passes (tests count them)

    def release_vae(self) -> None:
        """Everything is cached: drop the VAE so its memory can be freed."""
        self.vae = None

    def _path(self, file_hash: str, crop: Crop) -> Path:
        key = _key(image=file_hash, crop=[crop.bucket, crop.resized, crop.left, crop.top, crop.flip], vae=self.vae_key)
        return self.root / "latents" / key[:2] / f"{key}.safetensors"

    def cached(self, file_hash: str, crop: Crop) -> bool:
        """Is this entry on disk and readable?"""
        return self.root is not None and _load(self._path(file_hash, crop)) is not None

    def get(self, paths: list[Path], hashes: list[str], crops: list[Crop]):
        """(B, 2C, h, w) posterior parameters; encodes the misses in one VAE call."""
        import torch

        out: list = [None] * len(paths)
        if self.root is not None:
            for i, (h, c) in enumerate(zip(hashes, crops)):
                hit = _load(self._path(h, c))
                out[i] = None if hit is None else hit["parameters"]
        missing = [i for i, t in enumerate(out) if t is None]
        if missing:
            params = self.encode([paths[i] for i in missing], [crops[i] for i in missing])
            for i, p in zip(missing, params):
                out[i] = p
                if self.root is not None:
                    atomic_save_safetensors({"parameters": p}, self._path(hashes[i], crops[i]))
        return torch.stack(out)

    def encode(self, paths: list[Path], crops: list[Crop]):
        import torch

        if self.vae is None:
            raise LoraflowError(f"latent cache entry of {paths[0]} is missing or unreadable, and the VAE was not "
                                "loaded because the whole cache was on disk when training started; run again")
        pixels = torch.stack([load_pixels(p, c) for p, c in zip(paths, crops)])  # (B, 3, H, W)
        param = next(self.vae.parameters())
        with torch.no_grad():
            posterior = self.vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        self.encode_calls += 1
        return posterior.parameters.float().cpu()

    def sample(self, parameters, generator):
        """Draw latents from cached posterior parameters, scaled as the UNet expects."""
        import torch

        mean, logvar = parameters.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        latents = mean + std * noise
        return (latents - self.shift) * self.scaling


class TextStore:
    """Text conditioning per caption: embeds (1, L, D) and pooled (1, P) or none. `pipe` (with its
    text encoders) may stay None while every caption read is on disk."""

    def __init__(self, family, root: Path | None, encoder_key: str, pipe=None):
        self.pipe, self.family, self.root, self.encoder_key = pipe, family, root, encoder_key
        self.encode_calls = 0  # text-encoder passes (tests count them)
        self._memory: dict[str, tuple] = {}

    def _path(self, caption: str) -> Path:
        key = _key(caption=caption, family=self.family.name, encoders=self.encoder_key)
        return self.root / "text" / key[:2] / f"{key}.safetensors"

    def cached(self, caption: str) -> bool:
        """Is this caption's entry on disk and readable? (A hit is kept in memory.)"""
        if caption in self._memory:
            return True
        hit = _load(self._path(caption)) if self.root is not None else None
        if hit is not None:
            self._remember(caption, (hit["embeds"], hit.get("pooled")))
        return hit is not None

    def _remember(self, caption: str, value: tuple) -> None:
        if len(self._memory) < 4096:  # captions repeat across epochs; keep the small ones around
            self._memory[caption] = value

    def one(self, caption: str):
        if caption in self._memory:
            return self._memory[caption]
        hit = _load(self._path(caption)) if self.root is not None else None
        if hit is None:
            import torch

            if self.pipe is None:
                raise LoraflowError(f"text cache entry of caption {caption!r} is missing or unreadable, and the text "
                                    "encoders were not loaded because the whole cache was on disk when training "
                                    "started; run again")

            with torch.no_grad():
                pe = self.family.encode_prompts(self.pipe, [escape_caption(caption)])[0]
            self.encode_calls += 1
            hit = {"embeds": pe.embeds.float().cpu()}
            if pe.pooled is not None:
                hit["pooled"] = pe.pooled.float().cpu()
            if self.root is not None:
                atomic_save_safetensors(hit, self._path(caption))
        value = (hit["embeds"], hit.get("pooled"))
        self._remember(caption, value)
        return value

    def get(self, captions: list[str]):
        """(B, L, D), (B, P) or None. CLIP prompts longer than one 77-token window are padded
        with the empty prompt's window, exactly as encoding them together would do."""
        import torch

        pairs = [self.one(c) for c in captions]
        length = max(e.shape[1] for e, _ in pairs)
        empty = self.one("")[0] if any(e.shape[1] != length for e, _ in pairs) else None
        embeds = []
        for e, _ in pairs:
            while e.shape[1] < length:
                e = torch.cat([e, empty], dim=1)
            embeds.append(e)
        pooled = None if pairs[0][1] is None else torch.cat([p for _, p in pairs])
        return torch.cat(embeds), pooled


def encode_text_live(pipe, family, captions: list[str]):
    """Text conditioning with gradients (text-encoder LoRA): no cache."""
    import torch

    pes = family.encode_prompts(pipe, [escape_caption(c) for c in captions])
    pooled = None if pes[0].pooled is None else torch.cat([p.pooled for p in pes])
    return torch.cat([p.embeds for p in pes]), pooled
