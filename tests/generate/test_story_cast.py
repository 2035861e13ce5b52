"""A story's cast: characters are resolved into each panel's prompt, LoRAs and references, story.json
records them, and a wrong name is a one-line error naming the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from loraflow.errors import ConfigError
from loraflow.generate.cast import Character, resolve_cast
from loraflow.generate.story import scene_configs
from loraflow.generate.storyboard import Scene, StoryboardConfig, load_story, run_storyboard

DEMO_LORA = Path(__file__).resolve().parents[2] / "examples" / "loras" / "demo-striped.safetensors"


def write(tmp_path, data, name="story.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_cast_resolves_into_prompt_loras_and_references():
    kitten = Character(name="kitten", description={"en": "an orange kitten", "zh": "一只橘色的小猫"},
                       references=["k.png"], lora="kitten.safetensors", lora_weight=0.8, trigger="ohwx")
    dog = Character(name="dog", description="a brown dog")
    chars = [kitten, dog]

    a = resolve_cast(chars, Scene(prompt="{kitten} plays with {dog}"), 0)
    assert a.prompt == "ohwx, an orange kitten plays with a brown dog"
    assert a.names == ["kitten", "dog"] and a.loras == ("kitten.safetensors:0.8",)

    b = resolve_cast(chars, Scene(prompt="a rainy street", cast=["kitten"]), 1)
    assert b.prompt == "ohwx, an orange kitten,a rainy street"

    c = resolve_cast(chars, Scene(prompt="雨天,{kitten}", cast=["dog", "kitten"]), 2)  # Chinese prompt: zh words
    assert c.language == "zh" and c.prompt == "a brown dog,雨天,ohwx, 一只橘色的小猫"
    assert c.names == ["kitten", "dog"]  # placeholders first, then listed ones

    d = resolve_cast(chars, Scene(prompt="an empty room"), 3)
    assert d.members == () and d.prompt == "an empty room" and d.loras == ()
    assert b.to_json() == [{"name": "kitten", "words": "ohwx, an orange kitten", "lora": "kitten.safetensors:0.8",
                            "references": ["k.png"], "reference_strength": None}]


@pytest.fixture(scope="module")
def demo_session():
    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.session import GenerationSession

    return GenerationSession.from_options(GenerateConfig(device="cpu"))  # no model: the demo model


def test_story_json_records_the_cast_and_the_lora_reaches_only_its_panels(tmp_path, demo_session):
    from loraflow.demo.checker import read_image
    from loraflow.demo.shapes import Scene as Drawn, draw_scene

    ref = tmp_path / "hero.png"
    draw_scene(Drawn("red", "star")).save(ref)
    story = write(tmp_path, {
        "title": "cast", "defaults": {"steps": 12, "seed": 4, "seed_policy": "increment"},
        "characters": [
            {"name": "hero", "description": {"en": "a red star", "zh": "红色的星形"}, "references": [str(ref)],
             "lora": str(DEMO_LORA), "lora_weight": 1.0},
            {"name": "friend", "description": "a blue circle"}],
        "scenes": [
            {"title": "a", "prompt": "{hero} on the left, white background"},
            {"title": "b", "prompt": "on the right, white background", "cast": ["friend"]},
            {"title": "c", "prompt": "白色背景,上边有一个{hero}"},
            {"title": "d", "prompt": "a green square in the center, white background"}]})
    index = run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "o")), session=demo_session)
    saved = json.loads((tmp_path / "o" / "story.json").read_text(encoding="utf-8"))
    assert saved == index
    a, b, c, d = saved["scenes"]
    assert a["prompt"] == "a red star on the left, white background"
    assert b["prompt"] == "a blue circle,on the right, white background"
    assert c["prompt"] == "白色背景,上边有一个红色的星形"
    assert a["loras"] == c["loras"] == [f"{DEMO_LORA}:1"] and b["loras"] == d["loras"] == []
    assert [m["name"] for m in a["cast"]] == ["hero"] and a["references"] == [str(ref)]
    assert b["cast"][0]["words"] == "a blue circle" and "references" not in d
    # the hero's LoRA (stripes) acted on its panels only
    stripes = [read_image(Image.open(tmp_path / "o" / s["file"])).stripes for s in saved["scenes"]]
    assert min(stripes[0], stripes[2]) > max(stripes[1], stripes[3]) + 0.03, stripes
    assert "<lora:demo-striped:1>" in a["infotext"] and "<lora:" not in d["infotext"]


@pytest.mark.parametrize("change, message", [
    ({"scenes": [{"prompt": "x", "cast": ["kiten"]}]},
     r"story.yaml: scenes\[0\].cast: unknown character 'kiten' \(characters: kitten\)"),
    ({"scenes": [{"prompt": "x"}, {"prompt": "{kiten} runs"}]},
     r"scenes\[1\].prompt: unknown character '\{kiten\}' \(characters: kitten\)"),
    ({"characters": [{"name": "kitten", "description": "a"}, {"name": "kitten", "description": "b"}]},
     r"characters\[1\].name: 'kitten' is defined twice"),
    ({"characters": [{"name": "kit ten", "description": "a"}]}, r"characters.0.name"),
    # a name is a folder name too (--character-sheet writes sheets/NAME/)
    *[({"characters": [{"name": "kitten", "description": "a"}, {"name": bad, "description": "a"}]},
       r"key 'characters\.1\.name' = .*: a character name becomes a folder name")
      for bad in ("a/b", "a\\b", "..", "a..b", ".hidden", "kit\x00ten", "kit\x1bten")],
    ({"characters": [{"name": "kitten", "description": "a", "reference_strength": 0.5}]},
     r"characters\[0\].reference_strength: 'kitten' has no references to steer its panels with"),
    ({"characters": [{"name": "kitten", "descripton": "a"}]}, r"unknown key 'descripton'"),
])
def test_bad_cast_is_a_one_line_error(tmp_path, change, message):
    data = {"characters": [{"name": "kitten", "description": "an orange kitten"}], "scenes": [{"prompt": "x"}]}
    data.update(change)
    with pytest.raises(ConfigError, match=message) as e:
        load_story(write(tmp_path, data))
    assert "\n" not in str(e.value)


def test_demo_cast_example_brings_its_characters_into_every_scene():
    story = load_story(Path(__file__).resolve().parents[2] / "examples" / "stories" / "demo-cast.yaml")
    casts = story.panel_casts()
    assert len(casts) == 8 and all(len(c.members) == 1 for c in casts)
    assert all("{" not in c.prompt for c in casts)
    assert casts[4].prompt == "灰色背景,上边有一个红色的星形"  # the Chinese scene takes the Chinese description


def test_demo_two_example_keeps_each_character_to_its_region_in_every_scene():
    path = Path(__file__).resolve().parents[2] / "examples" / "stories" / "demo-two.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    words = {c["name"]: c["description"]["en"] for c in raw["characters"]}
    story = load_story(path)
    items = scene_configs(story, StoryboardConfig(story=str(path)))
    layouts = set()
    for scene, cast, item in zip(raw["scenes"], story.panel_casts(), items):
        placed = list(scene["regions"].items())
        assert [(r.character, r.region) for r in cast.regions] == placed
        assert sorted(cast.names) == sorted(words)  # both characters in every panel
        # each region prompt: the character's own words and the scene's, never the other character's
        assert [r.prompt for r in item.regions] == [f"{words[name]},{scene['prompt']}" for name, _ in placed]
        assert item.prompt == ",".join([words[name] for name, _ in placed] + [scene["prompt"]])
        layouts.add(frozenset(region for _, region in placed))
    assert layouts == {frozenset({"left", "right"}), frozenset({"top", "bottom"})}


@pytest.mark.parametrize("options, message", [
    ({"identity": "demo"}, r"--identity demo: pass identity=DemoIdentity\(\)"),
    ({"identity": "clip"}, r"--identity clip needs a local CLIP folder: --clip PATH"),
    ({"best_of": 2, "best_of_metric": "identity", "identity": "none", "aesthetic": "x"},
     r"--best-of-metric identity needs a cast and an identity scorer"),
    ({"repair": True, "identity": "none"}, r"--repair need local weights"),
])
def test_scoring_options_without_what_they_need_are_one_line_errors(tmp_path, options, message):
    story = write(tmp_path, {"characters": [{"name": "hero", "description": "a red star"}],
                             "scenes": [{"prompt": "{hero} on the left, white background"}]})
    with pytest.raises(ConfigError, match=message):  # raised before any model is loaded
        run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "o"), model="tiny:sdxl", **options))
