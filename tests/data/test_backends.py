"""The Ray and data-juicer backends give the same kept set as the in-process one."""
import json
import os
import shutil

import pytest
import yaml

from data_helpers import make_bad_inputs, noise_image, save, write_manifest
from loraflow.data.filter_run import filter_dataset


def dataset(tmp_path, n=40):
    rows = []
    for i in range(n):
        w, h = 300 + (i * 97) % 1000, 300 + (i * 61) % 1000
        im = noise_image(24, 24, seed=i).resize((w, h))
        rows.append({"text": f"picture {i}", "image": [str(save(im, tmp_path / "imgs" / f"{i}.jpg"))]})
    return rows


def recipe(tmp_path, manifest, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "project_name": name, "dataset_path": str(manifest), "export_path": str(tmp_path / name / "result.jsonl"),
        "np": 2, "text_keys": "text", "image_key": "image", "use_cache": False,
        "process": [{"image_shape_filter": {"min_width": 600, "min_height": 500}},
                    {"image_aspect_ratio_filter": {"min_ratio": 0.6, "max_ratio": 1.6}}],
    }))
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_backend_matches_in_process(tmp_path):
    import ray
    bad = make_bad_inputs(tmp_path / "bad")
    rows = dataset(tmp_path) + [{"text": "bad", "image": [str(bad["zero_byte"])]}, "not json"]
    manifest = write_manifest(tmp_path / "in.jsonl", rows)
    local = filter_dataset(recipe(tmp_path, manifest, "local"), progress=False)
    try:
        on_ray = filter_dataset(recipe(tmp_path, manifest, "ray"), backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert on_ray.kept == local.kept and on_ray.rejected == local.rejected and on_ray.errored == local.errored
    assert on_ray.total == len(rows) and 0 < len(on_ray.kept) < 40


@pytest.mark.slow
def test_data_juicer_backend_matches_in_process(tmp_path):
    exe = os.environ.get("LORAFLOW_DJ_PROCESS") or shutil.which("dj-process")
    if not exe:
        pytest.skip("dj-process not installed (set LORAFLOW_DJ_PROCESS=/path/to/dj-process)")
    manifest = write_manifest(tmp_path / "in.jsonl", dataset(tmp_path, n=12))
    local = filter_dataset(recipe(tmp_path, manifest, "local"), progress=False)
    dj = filter_dataset(recipe(tmp_path, manifest, "dj"), backend="data-juicer", dj_process=exe, progress=False)
    strip = [{k: v for k, v in r.items() if k != "__dj__stats__"} for r in local.kept]
    assert dj.kept == strip and dj.total == 12
    assert (tmp_path / "dj" / "result.jsonl").read_text() == (tmp_path / "local" / "result.jsonl").read_text()
    # same stats; data-juicer's file shows aspect ratios rounded to 10 decimals
    dj_stats, our_stats = ([json.loads(x)["__dj__stats__"] for x in (tmp_path / d / "result_stats.jsonl").read_text().splitlines()]
                           for d in ("dj", "local"))
    assert len(dj_stats) == len(our_stats)
    for a, b in zip(dj_stats, our_stats):
        assert a["image_width"] == b["image_width"] and a["aspect_ratios"] == pytest.approx(b["aspect_ratios"], rel=1e-9)


def test_missing_dj_process_is_a_clear_error(tmp_path, monkeypatch):
    from loraflow.errors import ConfigError

    monkeypatch.delenv("LORAFLOW_DJ_PROCESS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    manifest = write_manifest(tmp_path / "in.jsonl", dataset(tmp_path, n=2))
    with pytest.raises(ConfigError, match="pip install py-data-juicer"):
        filter_dataset(recipe(tmp_path, manifest, "x"), backend="data-juicer", progress=False)


def test_verify_images_gives_the_same_answer_on_good_images(tmp_path):
    manifest = write_manifest(tmp_path / "in.jsonl", dataset(tmp_path, n=10))
    fast = filter_dataset(recipe(tmp_path, manifest, "a"), progress=False)
    slow = filter_dataset(recipe(tmp_path, manifest, "b"), verify=True, progress=False)
    assert fast.kept == slow.kept and fast.rejected == slow.rejected
