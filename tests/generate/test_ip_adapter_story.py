"""Story characters steer their panels through the story's IP-Adapter with their reference_strength;
story.json records it, and panels without them stay byte-identical."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from loraflow.errors import ConfigError
from loraflow.generate.storyboard import StoryboardConfig, run_storyboard
from loraflow.models.tiny_ip_adapter import save_tiny_ip_adapter


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("story-ipa")
    ref = folder / "kitten.png"
    Image.fromarray((np.random.RandomState(3).rand(40, 40, 3) * 255).astype(np.uint8)).save(ref)
    return {"adapter": str(save_tiny_ip_adapter("sdxl", folder / "ipa")), "ref": str(ref)}


def story(tmp_path, files, strength, name, **extra):
    data = {"title": "t", "defaults": {"steps": 2, "seed": 5, "height": 64, "width": 64, "guidance_scale": 5.0},
            "characters": [{"name": "kitten", "description": "an orange kitten", "references": [files["ref"]],
                            **({"reference_strength": strength} if strength is not None else {})}],
            "scenes": [{"prompt": "{kitten} in a garden"}, {"prompt": "an empty street"}], **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def render(tmp_path, path, session, **options):
    out = tmp_path / path.stem
    run_storyboard(StoryboardConfig(story=str(path), out=str(out), model="tiny:sdxl", device="cpu", **options),
                   session=session)
    saved = json.loads((out / "story.json").read_text())
    return saved, [np.asarray(Image.open(out / s["file"]), dtype=np.float64) for s in saved["scenes"]]


def test_reference_strength_steers_only_its_characters_panels(tmp_path, files, tiny_session):
    session = tiny_session("sdxl")
    plain, (p0, p1) = render(tmp_path, story(tmp_path, files, None, "plain"), session)
    steered, (s0, s1) = render(tmp_path, story(tmp_path, files, 0.8, "steered", ip_adapter=files["adapter"]), session)
    zero, (z0, z1) = render(tmp_path, story(tmp_path, files, 0.0, "zero", ip_adapter=files["adapter"]), session)
    assert np.abs(s0 - p0).mean() > 1.0  # the kitten's panel is steered by its reference
    assert np.array_equal(s1, p1)  # the panel without it is the same bytes
    assert np.array_equal(z0, p0) and np.array_equal(z1, p1)  # strength 0: only the identity anchor
    first = steered["scenes"][0]
    assert first["ip_adapter"] == files["adapter"]
    assert first["ip_references"] == [{"image": files["ref"], "scale": 0.8, "mask": None}]
    assert first["cast"][0]["reference_strength"] == 0.8 and first["references"] == [files["ref"]]
    assert "IP-Adapter 0: " in first["infotext"] and "ip_references" not in steered["scenes"][1]
    assert "ip_references" not in zero["scenes"][0] and "ip_references" not in plain["scenes"][0]


def test_the_command_line_adapter_overrides_and_a_missing_one_is_a_one_line_error(tmp_path, files, tiny_session):
    path = story(tmp_path, files, 0.8, "needs")
    with pytest.raises(ConfigError, match=r"scenes\[0\]: .*needs an IP-Adapter.*--ip-adapter") as e:
        render(tmp_path, path, tiny_session("sdxl"))
    assert "\n" not in str(e.value)
    saved, _ = render(tmp_path, path, tiny_session("sdxl"), ip_adapter=files["adapter"])
    assert saved["scenes"][0]["ip_adapter"] == files["adapter"]
