"""Mutation check: plant known bugs one at a time in a copy of the source and see which tests catch them.

    python bench/mutations.py                    # every mutation, its own tests, a table at the end
    python bench/mutations.py --only shift,v_target --baseline
    python bench/mutations.py --list

Each mutation replaces one exact piece of text in one file under `src/loraflow/` of a temporary copy
of the repository (the real tree is never touched) and runs the tests aimed at it there, with
PYTHONPATH pointing at the copy's `src/`. A bug is "caught" when at least one of those tests fails;
the table names the first failing test (pytest -x). When the text is no longer in the file (the code
moved), the row says so: update the mutation's `old` text.

`--baseline` first runs every selected test set on the unmutated copy: a set that fails there cannot
tell anything. Tests marked xfail(strict=True) for a fix on another branch count as passing on
clean code and do not catch a bug until their marker is removed; `--runxfail` runs them as plain tests.
Not a CI job: a full run takes tens of minutes on two cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "outputs",
                                     "build", "dist", ".whl")


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # the planted bug, in words
    file: str  # under src/loraflow/
    old: str  # exact text, present once
    new: str
    tests: tuple[str, ...]  # pytest arguments: files or node ids


MUTATIONS = (
    # ---- the eight bugs no test caught before issue 20 -------------------------------------------
    Mutation("shift", "prompt weights shifted by one token (CLIP)", "models/prompt_encoding.py",
             "weight = torch.tensor([[1.0] + w + [1.0] * (n_pad + 1)], device=device)",
             "weight = torch.tensor([[1.0, 1.0] + w + [1.0] * n_pad], device=device)",
             ("tests/models/test_prompt_encoding.py",)),
    Mutation("shift_kolors", "prompt weights shifted by one token (ChatGLM)", "models/prompt_encoding.py",
             "weight = torch.tensor([[1.0] * n_pad + w], device=device, dtype=embeds.dtype)",
             "weight = torch.tensor([[1.0] * (n_pad - 1) + w + [1.0]], device=device, dtype=embeds.dtype)",
             ("tests/models/test_prompt_encoding.py",)),
    Mutation("no_rescale", "A1111 mean rescale after weighting removed", "models/prompt_encoding.py",
             "return hidden * (original_mean / new_mean)", "return hidden",
             ("tests/models/test_prompt_encoding.py",)),
    Mutation("cn_window", "ControlNet start/end window moved to the first steps", "generate/control/references.py",
             "control_guidance_start=[u.start for u in units] if many else units[0].start,\n"
             "                control_guidance_end=[u.end for u in units] if many else units[0].end,",
             "control_guidance_start=[0.0 for u in units] if many else 0.0,\n"
             "                control_guidance_end=[u.end - u.start for u in units] if many else units[0].end - units[0].start,",
             ("tests/generate/test_control.py::test_start_end_window_runs_the_controlnet_on_exactly_its_steps",)),
    Mutation("v_target", "v-prediction trained on the epsilon target", "train/objective.py",
             "target = noise_scheduler.get_velocity(latents, noise, timesteps)", "target = noise",
             ("tests/train/test_objective_values.py",)),
    Mutation("story_negative", "storyboard drops the story's shared negative prompt", "generate/story.py",
             "else (cfg.negative_prompt or story.negative_prompt),", "else (cfg.negative_prompt or \"\"),",
             ("tests/generate/test_storyboard.py",)),
    Mutation("symlink", "server's post-resolve path check removed (symlinks lead out)", "serve/paths.py",
             "if path != base and base not in path.parents:", "if False:",
             ("tests/serve/test_symlinks.py",)),
    Mutation("comfy_cache", "ComfyUI cache ignores a LoRA file's change on disk", "serve/comfy/executor.py",
             "    return [str(p), *file_stamp(p)]", "    return [str(p)]  # the file's state left out of the key",
             ("tests/serve/test_workflow.py::test_overwritten_lora_file_reruns_the_lora_node_and_changes_the_image",)),
    Mutation("pickle", "LoRA .pt read with weights_only=False under --allow-pickle", "models/pickle_files.py",
             'state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)',
             'state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)',
             ("tests/models/lora/test_lora_files.py",)),
    # ---- more in the same modules ----------------------------------------------------------------
    Mutation("noise_offset", "noise offset drawn per pixel instead of per channel", "train/objective.py",
             "noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)",
             "noise_offset * torch.randn(latents.shape, generator=generator)",
             ("tests/train/test_objective_values.py",)),
    Mutation("caption_dropout", "caption dropout ignored", "train/captions.py",
             "dropped = [dropout_rng.random() < self.policy.caption_dropout for _ in entries]",
             "dropped = [False for _ in entries]",
             ("tests/train/test_objective_values.py",)),
    Mutation("keep_tokens", "caption shuffle moves the kept leading tags too", "train/captions.py",
             "kept, rest = tags[:policy.keep_tokens], tags[policy.keep_tokens:]", "kept, rest = [], tags",
             ("tests/train/test_captions.py",)),
    Mutation("mask_flip", "loss mask not flipped with its image", "train/masks.py",
             "    if crop.flip:\n        mask = ImageOps.mirror(mask)", "    pass",
             ("tests/train/test_masks.py",)),
    Mutation("ema_resume", "EMA state not restored on resume", "train/ema.py",
             "            target.copy_(saved.to(target.device, target.dtype))", "            pass",
             ("tests/train/test_ema.py",)),
    Mutation("min_snr_v", "min-SNR weight without the v-prediction form (SNR + 1)", "train/objective.py",
             'weight = clipped / (s + 1.0) if prediction_type == "v_prediction" else clipped / s',
             "weight = clipped / s",
             ("tests/train/test_variants.py::test_min_snr_weights",)),
    Mutation("lora_alpha", "LoRA scale ignores the file's alpha (alpha = rank)", "models/lora/formats.py",
             "mod_alphas = {m: float(alphas.get(prefix + canonical_module(component, m), r)) for m, r in ranks.items()}",
             "mod_alphas = {m: float(r) for m, r in ranks.items()}",
             ("tests/models/lora/test_lora_apply.py",)),
    Mutation("lora_weight", "LoRA weight (<lora:x:0.5>) ignored", "models/lora/apply.py",
             "_set_weights(pipe, names, [float(weight) for _, weight in loras])",
             "_set_weights(pipe, names, [1.0 for _ in loras])",
             ("tests/models/lora/test_lora_apply.py",)),
    Mutation("filter_errored", "filter drops errored items instead of listing them", "data/filter_result.py",
             'self.errored.append({**row, LORAFLOW_KEY: {"line": line, "error": error}})', "pass",
             ("tests/data/test_filter.py",)),
    Mutation("filter_dedup", "filter keeps duplicates", "data/filter_run.py",
             "if key and key in first_seen:", "if False:",
             ("tests/data/test_filter.py",)),
    Mutation("path_dotdot", "`..` and absolute names no longer refused before resolving", "serve/paths.py",
             'if Path(name).is_absolute() or name.startswith("~") or ".." in parts:', "if False:",
             ("tests/serve/test_api.py::test_path_traversal_is_refused_everywhere",)),
    Mutation("resume_rng", "resume restarts the data order and noise at micro-batch 0", "train/trainer.py",
             "step_loss = optimizer_step(step, config,", "step_loss = optimizer_step(step - start, config,",
             ("tests/train/test_resume.py::test_resume_from_checkpoint_equals_uninterrupted",)),
)


def copy_repo(dest: Path) -> Path:
    shutil.copytree(REPO, dest, ignore=COPY_IGNORE, symlinks=True)
    return dest


def plant(root: Path, m: Mutation) -> str | None:
    """Apply `m` in the copy at `root`; the reason when it cannot be applied."""
    path = root / "src" / "loraflow" / m.file
    if not path.is_file():
        return f"{m.file} not found (moved?)"
    text = path.read_text(encoding="utf-8")
    count = text.count(m.old)
    if count != 1:
        return f"text found {count} times in {m.file} (code changed?)"
    path.write_text(text.replace(m.old, m.new), encoding="utf-8")
    return None


def run_tests(root: Path, tests: tuple[str, ...], runxfail: bool, timeout: int) -> tuple[int, list[str], float]:
    """(pytest exit code, failing test ids, seconds) in the copy at `root`."""
    env = dict(os.environ, PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    if runxfail:
        cmd.append("--runxfail")
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, ["(timed out)"], time.monotonic() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
    return proc.returncode, failed, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--baseline", action="store_true", help="first run each test set on the clean copy")
    parser.add_argument("--runxfail", action="store_true", help="run xfail-marked tests as plain tests")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name:16} {m.bug}  [{m.file}]")
        return 0 if chosen else 2

    rows = []
    with tempfile.TemporaryDirectory(prefix="loraflow-mutations-") as tmp:
        clean = copy_repo(Path(tmp) / "clean")
        if args.baseline:
            for tests in dict.fromkeys(m.tests for m in chosen):
                code, failed, secs = run_tests(clean, tests, args.runxfail, args.timeout)
                state = "passes" if code == 0 else f"FAILS ({', '.join(failed) or f'exit {code}'})"
                print(f"baseline {' '.join(tests)}: {state} [{secs:.0f}s]", flush=True)
        for m in chosen:
            work = Path(tmp) / m.name
            shutil.copytree(clean, work, symlinks=True)
            problem = plant(work, m)
            if problem:
                rows.append((m, "not planted", problem, 0.0))
            else:
                code, failed, secs = run_tests(work, m.tests, args.runxfail, args.timeout)
                caught = "caught" if code != 0 else "MISSED"
                rows.append((m, caught, failed[0] if failed else ("(no test failed)" if code == 0 else f"exit {code}"),
                             secs))
            print(f"{m.name:16} {rows[-1][1]:11} {rows[-1][2]} [{rows[-1][3]:.0f}s]", flush=True)
            shutil.rmtree(work, ignore_errors=True)

    print("\n| bug | caught? | first failing test |\n|---|---|---|")
    for m, caught, detail, _ in rows:
        print(f"| {m.bug} (`{m.name}`) | {caught} | {detail} |")
    return 0 if all(r[1] == "caught" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
