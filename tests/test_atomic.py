"""loraflow.atomic, the one way files are written: permissions from the umask, all or nothing."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from loraflow import atomic
from loraflow.data.jsonl import read_jsonl, write_jsonl
from loraflow.generate.infotext import read_infotext, save_png_with_infotext
from loraflow.models.lora.save import save_lora


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_leaves_0644_under_umask_022(tmp_path, umask_022):
    # 0o644 = what `open(path, "w")` gives under umask 022: rw for the user, r for group and others.
    written = [
        atomic.atomic_write_text(tmp_path / "a.txt", "text"),
        atomic.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01"),
        atomic.atomic_save_image(Image.new("RGB", (4, 4)), tmp_path / "c.png"),
        atomic.atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "d.safetensors"),
        save_png_with_infotext(Image.new("RGB", (4, 4)), tmp_path / "e.png", "a cat\nSteps: 2"),
    ]
    with atomic.atomic_open(tmp_path / "f.csv", encoding="utf-8-sig", newline="") as f:
        f.write("file_name,text\n")
    written.append(tmp_path / "f.csv")
    write_jsonl(tmp_path / "g.jsonl", [{"text": "x"}])
    written.append(tmp_path / "g.jsonl")
    peft_state = {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 8),
                  "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(8, 2)}
    written.append(save_lora(tmp_path / "h.safetensors", peft_state, family="sd15", rank=2, alpha=2))
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(0o644) for p in written}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temp files left
    # and the contents are what was written
    assert read_infotext(tmp_path / "e.png") == "a cat\nSteps: 2"
    assert [line.sample for line in read_jsonl(tmp_path / "g.jsonl")] == [{"text": "x"}]
    assert (tmp_path / "f.csv").read_bytes() == b"\xef\xbb\xbffile_name,text\n"


def test_the_umask_decides(tmp_path):
    old = os.umask(0o077)
    try:
        path = atomic.atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    atomic.atomic_save_safetensors({"a": torch.ones(3)}, path)

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        atomic.atomic_save_safetensors({"a": torch.zeros(3)}, path)
    assert load_file(path)["a"].sum() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_an_exception_inside_the_block_removes_the_temp_file(tmp_path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic.atomic_open(tmp_path / "keep.txt") as f:
            f.write("half")
            raise ValueError("a bug mid-write")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


WRITER = textwrap.dedent("""
    import sys, time
    from loraflow.atomic import atomic_open
    with atomic_open(sys.argv[1]) as f:
        f.write("new " * 100_000)
        f.flush()
        print("WRITING", flush=True)
        time.sleep(60)
""")


def test_kill_9_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "index.json"
    target.write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert target.read_text() == "old"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".index.json.")  # hidden, never the target


def test_model_folders_written_by_libraries_follow_the_umask(tmp_path, umask_022):
    """`loraflow models tiny` and the tiny ControlNet go through diffusers' save_pretrained, whose
    safetensors writer makes 0600 files on its own; loraflow resets them to what the umask gives."""
    from loraflow.generate.control.tiny import save_tiny_controlnet
    from loraflow.models.tiny import save_tiny_model

    folders = [save_tiny_model("sd15", tmp_path / "tiny"), save_tiny_controlnet("sd15", tmp_path / "cn")]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: mode(p) for p in files} == {p.name: 0o644 for p in files}
