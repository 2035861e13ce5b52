"""`--backend data-juicer` accounts for every input: what dj-process wrote is kept, the rest is
rejected (data-juicer does not say by which op), unparsable lines are errored. A stand-in
`dj-process` keeps the even-numbered samples, so this runs without data-juicer installed."""
import json
import sys

import yaml

from data_helpers import write_manifest
from loraflow.data.filter_run import filter_dataset

FAKE_DJ_PROCESS = """#!{python}
import json, os, sys
import yaml
config = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
with open(config["dataset_path"]) as f, open(config["export_path"], "w") as out:
    for line in f:
        try:
            sample = json.loads(line)
        except ValueError:
            continue
        if int(sample["text"].split()[-1]) % 2 == 0:  # data-juicer writes image paths made absolute
            sample["image"] = [os.path.join(os.path.dirname(config["dataset_path"]), p) for p in sample["image"]]
            out.write(json.dumps(sample) + "\\n")
"""


def test_every_input_is_kept_rejected_or_errored(tmp_path):
    exe = tmp_path / "dj-process"
    exe.write_text(FAKE_DJ_PROCESS.format(python=sys.executable))
    exe.chmod(0o755)
    rows = [{"text": f"picture {i}", "image": [f"imgs/{i}.jpg"]} for i in range(5)] + ["{not json"]
    manifest = write_manifest(tmp_path / "in.jsonl", rows)
    recipe = tmp_path / "dj.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset_path": str(manifest), "export_path": str(tmp_path / "out" / "result.jsonl"),
        "text_keys": "text", "image_key": "image", "process": [{"image_shape_filter": {"min_width": 10}}]}))
    (tmp_path / "out").mkdir()

    result = filter_dataset(recipe, backend="data-juicer", dj_process=str(exe), progress=False)

    assert result.total == 6 and result.rejected_by == {"data-juicer": 2}
    assert [r["text"] for r in result.kept] == ["picture 0", "picture 2", "picture 4"]
    # relative image paths are read against the manifest's folder, as data-juicer does
    assert result.kept[0]["image"] == [str(tmp_path / "imgs" / "0.jpg")]
    verdicts = [r["__loraflow__"] for r in result.rejected]
    assert [v["line"] for v in verdicts] == [2, 4]
    assert {(v["op"], v["stat"], v["value"]) for v in verdicts} == {("data-juicer", None, None)}
    assert all("does not say which op" in v["reason"] for v in verdicts)
    (errored,) = result.errored
    assert errored["raw"] == "{not json" and errored["__loraflow__"]["line"] == 6
    written = [json.loads(x) for x in (tmp_path / "out" / "result_rejected.jsonl").read_text().splitlines()]
    assert written == result.rejected
