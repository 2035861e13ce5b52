"""Typed options of the `loraflow data ...` commands (one model per command; CLI flags and
config keys are derived from these fields). Kept light: imported by `loraflow --help`."""
from __future__ import annotations

from typing import Literal

from loraflow.config import Options, opt


class IngestOptions(Options):
    source: str = opt("", "folder of images, a .jsonl/.csv manifest, hf:NAME[:split] or ms:NAME", cli=False)
    out: str = opt("", "output folder: images/ and metadata.jsonl (data-juicer layout)")
    caption: str | None = opt(None, "caption for images that have none of their own (the seed uses 二次元)")
    caption_from: Literal["txt", "column"] | None = opt(
        None, "per-image captions: same-name .txt files (kohya) or a manifest/dataset column (default: whichever exists)")
    caption_column: str = opt("text", "manifest / hub dataset column holding the caption")
    image_column: str = opt("image", "manifest / hub dataset column holding the image (path or picture)")
    root: str | None = opt(None, "manifest paths must stay inside this folder (default: the manifest's folder)")
    subset_name: str | None = opt(None, "hub dataset subset (ModelScope `subset_name`, HF config name)")
    split: str = opt("train", "hub dataset split (hf:NAME:split overrides)")
    cache_dir: str | None = opt(None, "hub download cache folder")
    image_format: Literal["jpg", "png"] = opt("jpg", "format of the saved RGB images")
    quality: int = opt(95, "JPEG quality of the saved images", ge=1, le=100)
    keep_duplicates: bool = opt(False, "keep images whose pixels equal an earlier image's")
    np: int = opt(2, "worker processes for decoding/saving", ge=1)
    progress: bool = opt(True, "show progress bars")


class FilterOptions(Options):
    config: str = opt("", "data-juicer recipe (YAML)")
    backend: Literal["local", "ray", "data-juicer"] = opt(
        "local", "local: this machine, np processes; ray: Ray Data map_batches; data-juicer: run dj-process")
    np: int | None = opt(None, "worker processes (default: the recipe's np)", ge=1)
    verify_images: bool = opt(False, "fully decode every image even when an op needs only its size (slower)")
    dj_process: str | None = opt(None, "path of data-juicer's dj-process (backend data-juicer; default: on PATH)")
    progress: bool = opt(True, "show progress bars")


class ExportOptions(Options):
    result: str = opt("", "kept samples: data-juicer JSONL (`text` + `image` list)", cli=False)
    out: str = opt("", "output folder")
    format: Literal["diffsynth", "imagefolder", "kohya"] = opt(
        "diffsynth", "diffsynth: train/metadata.csv; imagefolder: train/metadata.jsonl; kohya: N_name/ + .txt")
    trigger_word: str | None = opt(None, "put this word first in every caption (e.g. 'sks')")
    caption_prefix: str | None = opt(None, "text to put before every caption (after the trigger word)")
    repeats: int = opt(10, "kohya: times each image is seen per epoch (the N in N_name/)", ge=1)
    name: str = opt("subject", "kohya: concept folder name (the name in N_name/)")
    text_key: str = opt("text", "field holding the caption")
    image_key: str = opt("image", "field holding the image path list")
    progress: bool = opt(True, "show progress bars")


class StatsOptions(Options):
    dataset: str = opt("", "data-juicer JSONL, an exported folder, or a folder of images", cli=False)
    plot: str | None = opt(None, "PNG of histograms (default: <dataset>-stats.png beside it)")
    text_key: str = opt("text", "field holding the caption (JSONL input)")
    image_key: str = opt("image", "field holding the image path list (JSONL input)")
    progress: bool = opt(True, "show progress bars")
