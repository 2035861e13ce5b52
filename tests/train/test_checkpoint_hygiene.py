"""Crash hygiene of training outputs: a re-saved checkpoint lands before the old one goes, debris
of a killed run is removed (and reported) at the next start, a full disk is one line, and
`--resume latest` before any checkpoint starts from step 0 with a notice."""
from __future__ import annotations

import errno
import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import base_config
from loraflow.train import checkpoint


def _optimizer():
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _save(out, step, value, keep=3):
    opt, sched = _optimizer()
    return checkpoint.save_checkpoint(out, step, {"w": torch.full((2,), float(value))}, opt, sched, {}, keep)


def test_resave_renames_the_new_checkpoint_into_place_before_removing_the_old(tmp_path, monkeypatch):
    _save(tmp_path, 5, 1.0)
    events = []
    real_rename, real_rmtree = pathlib.Path.rename, checkpoint.shutil.rmtree

    def rename(self, target):
        events.append(("rename", self.name, pathlib.Path(target).name))
        return real_rename(self, target)

    def rmtree(path, *a, **kw):
        if pathlib.Path(path).exists():
            events.append(("remove", pathlib.Path(path).name))
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    _save(tmp_path, 5, 2.0)
    new_lands = events.index(("rename", "step-000005.tmp", "step-000005"))
    old_goes = events.index(("remove", "step-000005.replaced"))
    assert new_lands < old_goes
    assert load_file(tmp_path / "checkpoints" / "step-000005" / "lora.safetensors")["w"].tolist() == [2.0, 2.0]


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path, monkeypatch):
    _save(tmp_path, 5, 1.0)
    real_rename = pathlib.Path.rename

    def killed_at_second_rename(self, target):
        if self.name.endswith(".tmp"):
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this line runs
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", killed_at_second_rename)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 5, 2.0)
    monkeypatch.setattr(pathlib.Path, "rename", real_rename)
    assert not (tmp_path / "checkpoints" / "step-000005").exists()  # the gap the old code lost it in
    checkpoint.remove_partial(tmp_path)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-000005"]
    assert load_file(tmp_path / "checkpoints" / "step-000005" / "lora.safetensors")["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000005"]


def test_stale_tmp_files_and_folders_are_removed_and_reported(tmp_path, capsys):
    _save(tmp_path, 1, 1.0)
    debris = [tmp_path / ".lora.safetensors.k2j4.tmp", tmp_path / "checkpoints" / ".state.json.x9.tmp"]
    for path in debris:
        path.write_bytes(b"partial")
    (tmp_path / "checkpoints" / "step-000002.tmp").mkdir()
    (tmp_path / "checkpoints" / "step-000002.tmp" / "lora.safetensors").write_bytes(b"partial")
    keep = tmp_path / "notes.tmp.txt"
    keep.write_text("not ours")
    removed = checkpoint.remove_partial(tmp_path)
    assert sorted(p.name for p in removed) == sorted([".lora.safetensors.k2j4.tmp", ".state.json.x9.tmp",
                                                      "step-000002.tmp"])
    assert not any(p.exists() for p in debris) and not (tmp_path / "checkpoints" / "step-000002.tmp").exists()
    assert keep.exists() and [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-000001"]
    assert "removed 3 unfinished file(s)" in capsys.readouterr().out
    assert checkpoint.remove_partial(tmp_path) == []  # nothing left: nothing said


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1, 1.0)

    def full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_save_safetensors", full)
    with pytest.raises(OSError):
        _save(tmp_path, 2, 2.0)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-000001"]


def test_full_disk_in_the_train_command_is_one_line(tmp_path, shapes_dataset, monkeypatch, capsys):
    from loraflow.cli import main

    def full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_save_safetensors", full)
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps(base_config(tmp_path, shapes_dataset, max_steps=1)))
    assert main(["train", "--config", str(cfg)]) == 2
    stderr = capsys.readouterr().err  # progress bars go there too; the error is one line of its own
    err = [line[line.index("error: "):] for line in stderr.replace("\r", "\n").splitlines() if "error: " in line]
    assert len(err) == 1 and err[0].startswith("error: disk full while writing") and "step-000001.tmp" in err[0]
    assert "Traceback" not in stderr


def test_resume_latest_without_a_checkpoint_starts_from_step_0(tmp_path, shapes_dataset, capsys):
    from loraflow.train.trainer import train

    config = base_config(tmp_path, shapes_dataset, max_steps=2, resume="latest")
    resumed = train(config)
    out = capsys.readouterr().out
    assert "--resume latest: no checkpoint" in out and "starting from step 0" in out
    fresh = train(dict(config, output=str(tmp_path / "fresh"), resume=None))
    assert resumed.steps == fresh.steps == 2
    assert resumed.losses == fresh.losses  # the same run as one started without --resume
