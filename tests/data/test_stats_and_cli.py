"""`data stats` and the command line (exit codes, one-line errors, no heavy imports)."""
import subprocess
import sys

import yaml
from PIL import Image

from data_helpers import noise_image, save, write_manifest
from loraflow.data.options import StatsOptions
from loraflow.data.stats_run import compute_stats


def test_stats_numbers_and_histogram_png(tmp_path):
    paths = [save(noise_image(w, h), tmp_path / f"{i}.png") for i, (w, h) in enumerate([(100, 50), (200, 100), (300, 300)])]
    ds = write_manifest(tmp_path / "d.jsonl", [{"text": "abc", "image": [str(p)]} for p in paths] + ["oops"])
    stats = compute_stats(StatsOptions(dataset=str(ds), progress=False))
    assert stats.count == 3 and len(stats.errored) == 1
    assert stats.values["width"] == [100, 200, 300] and stats.values["aspect"] == [2.0, 2.0, 1.0]
    assert "width" in stats.table()


def test_cli_full_round_trip(tmp_path, data_cli, capsys):
    src = tmp_path / "raw"
    for i, (w, h) in enumerate([(1100, 1100), (900, 1200), (1300, 1050)]):
        save(noise_image(w, h, seed=i), src / f"{i}.jpg")
    assert data_cli(["data", "ingest", str(src), "--out", str(tmp_path / "in"), "--caption", "二次元", "--no-progress"]) == 0
    assert "3 in: 3 written + 0 skipped + 0 errored" in capsys.readouterr().out
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset_path": str(tmp_path / "in" / "metadata.jsonl"), "export_path": str(tmp_path / "f" / "result.jsonl"),
        "image_key": "image", "process": [{"image_shape_filter": {"min_width": 1024, "min_height": 1024}}]}))
    assert data_cli(["data", "filter", "--config", str(recipe), "--no-progress", "--np", "1"]) == 0
    assert "filter: 3 in: 2 kept + 1 rejected + 0 errored" in capsys.readouterr().out
    assert data_cli(["data", "export", str(tmp_path / "f" / "result.jsonl"), "--out", str(tmp_path / "t"),
                     "--format", "diffsynth", "--no-progress"]) == 0
    assert (tmp_path / "t" / "train" / "metadata.csv").exists()
    assert data_cli(["data", "stats", str(tmp_path / "t"), "--plot", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 600


def test_cli_errors_are_one_line_exit_2(tmp_path, data_cli, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("process:\n  - image_shape_filter: {min_width: wide}\n")
    assert data_cli(["data", "filter", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert data_cli(["data", "ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert data_cli(["data", "filter", "--config", str(bad), "--backend", "ray", "--np", "0"]) == 2


HELP_PROBE = """
import sys
import loraflow.cli as cli
{patch}
try:
    cli.main(["--help"])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "cv2", "ray", "datasets", "modelscope", "diffusers") if m in sys.modules)
print("HEAVY", heavy)
"""


def _probe(patch: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HELP_PROBE.format(patch=patch)], capture_output=True, text=True, timeout=120)


def test_data_help_imports_nothing_heavy():
    proc = _probe('cli.COMMAND_MODULES = ("loraflow.data.cli",)')
    assert "HEAVY []" in proc.stdout, proc.stderr[-500:]


def test_full_loraflow_help_imports_no_torch():
    proc = _probe("")
    if "ModuleNotFoundError: No module named 'loraflow." in proc.stderr:
        import pytest

        pytest.skip("another package's cli module is not there yet: " + proc.stderr.strip().splitlines()[-1])
    assert "HEAVY []" in proc.stdout, proc.stderr[-500:]
