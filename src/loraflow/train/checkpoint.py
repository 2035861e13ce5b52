"""Training checkpoints: save every N steps, keep the last K, resume exactly.

    OUTPUT/checkpoints/step-000050/
        lora.safetensors       peft-format LoRA weights, fp32 ("unet.*", "text_encoder.*")
        optimizer.safetensors  optimizer tensors ("state.<i>.exp_avg" ...) and the torch RNG state
        state.json             step, data position, optimizer hyper-parameters, LR-schedule state

A checkpoint is written into `step-000050.tmp/` and renamed into place only when complete, so a
kill during a save leaves the previous checkpoint as it was; `.tmp` leftovers are removed (and
reported) at the next start. Nothing here unpickles: tensors are safetensors, the rest is JSON.

Data order and noise are pure functions of (seed, micro-batch index), so restoring the step
restores the data position and the noise stream too (`buckets.BatchPlan`, `trainer._generator`).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError
from loraflow.atomic import atomic_save_safetensors, atomic_write_text, fsync_dir

_STEP_DIR = re.compile(r"step-(\d+)")
_REPLACED = ".replaced"  # an existing checkpoint moved aside while its re-save lands
FORMAT_VERSION = 1


def checkpoint_root(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def list_checkpoints(output: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def remove_partial(output: str | Path) -> list[Path]:
    """Clean up after a run that was killed: a checkpoint caught between its two renames is put
    back, then `step-N.tmp/` folders and the `.NAME.XXXX.tmp` files of interrupted atomic writes
    (the final LoRA, config.yaml, ...) are removed. Returns what was removed, and says so."""
    output = Path(output)
    root = checkpoint_root(output)
    removed: list[Path] = []
    if root.is_dir():
        for old in sorted(root.glob("step-*" + _REPLACED)):
            final = old.with_name(old.name[: -len(_REPLACED)])
            if not final.exists() and (old / "state.json").is_file():
                old.rename(final)  # killed after moving the old one aside, before the new one landed
            else:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old)
        for p in root.glob("*.tmp"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    for folder in (output, root):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):  # loraflow.atomic / train.files temp-file names
                if p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
    if removed:
        print(f"loraflow train: removed {len(removed)} unfinished file(s) left by an interrupted run: "
              + ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""), flush=True)
    return removed


def resolve_resume(resume: str, output: str | Path) -> Path | None:
    """The checkpoint to resume from; None (start at step 0, with a notice) when `latest` finds none
    yet, e.g. after a kill before the first save."""
    if resume == "latest":
        found = list_checkpoints(output)
        if not found:
            print(f"loraflow train: --resume latest: no checkpoint in {checkpoint_root(output)} yet; "
                  "starting from step 0", flush=True)
            return None
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ConfigError(f"resume: {path} is not a checkpoint folder (no state.json); use 'latest' or a step-N folder")
    return path


# ---- optimizer state <-> (tensors, json) ------------------------------------------------------
def _split(value: Any, prefix: str, tensors: dict) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {str(k): _split(v, f"{prefix}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_checkpoint(output: str | Path, step: int, lora_state: dict, optimizer, lr_scheduler, extra: dict,
                    keep: int) -> Path:
    """Write checkpoint `step` atomically and prune to the last `keep`. Returns its folder."""
    import torch

    root = checkpoint_root(output)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors: dict = {}
    opt_state = optimizer.state_dict()
    opt_json = {"state": _split({str(k): v for k, v in opt_state["state"].items()}, "state", tensors),
                "param_groups": _split(opt_state["param_groups"], "param_groups", tensors)}
    tensors["rng.torch"] = torch.get_rng_state()
    atomic_save_safetensors(lora_state, tmp / "lora.safetensors")
    atomic_save_safetensors(tensors, tmp / "optimizer.safetensors")
    state = {"format": FORMAT_VERSION, "step": step, "optimizer": opt_json,
             "lr_scheduler": lr_scheduler.state_dict(), **extra}
    atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))  # last: marks the folder complete
    # The new checkpoint is renamed into place before the old one is removed: a kill between the
    # two renames leaves the old one as `step-N.replaced`, which `remove_partial` puts back.
    replaced = final.with_name(final.name + _REPLACED)
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
    tmp.rename(final)
    fsync_dir(root)
    shutil.rmtree(replaced, ignore_errors=True)
    for old in list_checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def load_checkpoint(path: Path, optimizer, lr_scheduler) -> tuple[dict, dict]:
    """Restore optimizer, LR schedule and RNG in place; returns (lora_state, state.json)."""
    import torch
    from safetensors.torch import load_file

    state = read_state(path)
    tensors = load_file(path / "optimizer.safetensors")
    opt = state["optimizer"]
    optimizer.load_state_dict({"state": {int(k): v for k, v in _join(opt["state"], tensors).items()},
                               "param_groups": _join(opt["param_groups"], tensors)})
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return load_file(path / "lora.safetensors"), state
