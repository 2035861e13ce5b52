"""Images/s of `loraflow data filter` vs data-juicer's `dj-process` on the seed's recipe.

    python bench/filter.py --n 3000 --dj-process /path/to/venv/bin/dj-process

Both run the seed recipe (examples/recipes/seed-anime.yaml, plus `use_cache: false` so
data-juicer's dataset cache cannot hide the work) over the same generated JPEGs, each as a
fresh command (start-up included), and the kept sets are compared. Without dj-process
(--dj-process or $LORAFLOW_DJ_PROCESS or on PATH) the reference is a stand-in: a plain
Pillow loop that fully decodes every image, which is what data-juicer's `load_image` does.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "recipes" / "seed-anime.yaml"


def _make(args: tuple[int, str]) -> str:
    i, path = args
    rng = np.random.default_rng(i)
    w, h = int(rng.integers(512, 2300)), int(rng.integers(512, 2300))
    small = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    small.resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def make_dataset(work: Path, n: int) -> Path:
    """N JPEGs of varied sizes (about half pass the seed recipe) in the seed's folder layout."""
    images = work / "images"
    manifest = work / "data" / "data-juicer" / "input" / "metadata.jsonl"
    if manifest.exists() and len(manifest.read_text().splitlines()) == n:
        return manifest
    images.mkdir(parents=True, exist_ok=True)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(images / f"{i}.jpg")) for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        paths = list(pool.map(_make, jobs, chunksize=32))
    manifest.write_text("".join(json.dumps({"text": "二次元", "image": [p]}) + "\n" for p in paths))
    return manifest


def recipe_for(work: Path, name: str, np_: int | None) -> Path:
    text = SEED.read_text(encoding="utf-8").replace("./data/data-juicer/output/result.jsonl",
                                                    f"./data/data-juicer/output-{name}/result.jsonl")
    if np_:
        text = text.replace("np: 4", f"np: {np_}")
    path = work / f"recipe-{name}.yaml"
    path.write_text(text + "\nuse_cache: false\n", encoding="utf-8")
    shutil.rmtree(work / "data" / "data-juicer" / f"output-{name}", ignore_errors=True)
    return path


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{proc.stderr[-2000:]}")
    return seconds


def pil_reference(manifest: Path) -> tuple[float, list[str]]:
    """Stand-in reference: decode every image fully, then apply the seed's two rules."""
    start = time.perf_counter()
    kept = []
    for line in manifest.read_text().splitlines():
        path = json.loads(line)["image"][0]
        im = Image.open(path).convert("RGB")
        w, h = im.size
        if w >= 1024 and h >= 1024 and 0.5 <= w / h <= 2.0:
            kept.append(path)
    return time.perf_counter() - start, kept


def kept_paths(work: Path, name: str) -> list[str]:
    out = work / "data" / "data-juicer" / f"output-{name}" / "result.jsonl"
    return [json.loads(x)["image"][0] for x in out.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="number of generated images")
    ap.add_argument("--work", default="/tmp/loraflow-bench-filter", help="scratch folder (images are reused)")
    ap.add_argument("--dj-process", default=os.environ.get("LORAFLOW_DJ_PROCESS") or shutil.which("dj-process"))
    ap.add_argument("--np", type=int, default=None, help="override the recipe's np (both sides)")
    args = ap.parse_args()
    work = Path(args.work)
    manifest = make_dataset(work, args.n)
    print(f"{args.n} JPEGs, 512..2300 px a side; seed recipe (shape >= 1024x1024, 0.5 <= w/h <= 2); cores: {os.cpu_count()}")

    ours = timed([sys.executable, "-m", "loraflow.data.cli", "data", "filter", "--no-progress",
                  "--config", str(recipe_for(work, "loraflow", args.np))], work)
    ours_kept = kept_paths(work, "loraflow")
    if args.dj_process and Path(args.dj_process).exists():
        ref_name = f"dj-process ({args.dj_process})"
        ref = timed([args.dj_process, "--config", str(recipe_for(work, "dj", args.np))], work)
        ref_kept = kept_paths(work, "dj")
    else:
        ref_name = "STAND-IN: plain Pillow full-decode loop (dj-process not found; pass --dj-process)"
        ref, ref_kept = pil_reference(manifest)
    print(f"{'':34}{'seconds':>10}{'images/s':>12}{'kept':>8}")
    print(f"{'loraflow data filter':34}{ours:10.2f}{args.n / ours:12.1f}{len(ours_kept):8d}")
    print(f"{'reference':34}{ref:10.2f}{args.n / ref:12.1f}{len(ref_kept):8d}   <- {ref_name}")
    print(f"speed-up: {ref / ours:.1f}x   same kept set: {sorted(ours_kept) == sorted(ref_kept)}")


if __name__ == "__main__":
    main()
