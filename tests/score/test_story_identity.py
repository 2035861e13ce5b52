"""Identity scores: CLIP-I (cosine of image embeddings, tiny random CLIP) ranks a panel made from a
character's reference above one made from another picture, and story.json carries the value a
direct transformers computation gives; the demo checker scores colour and shape."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from loraflow.demo.identity import DemoIdentity, definition
from loraflow.demo.shapes import Scene as Drawn
from loraflow.demo.shapes import draw_scene
from loraflow.generate.cast import Character
from loraflow.generate.options import GenerateConfig
from loraflow.generate.storyboard import StoryboardConfig, run_storyboard


@pytest.fixture(scope="module")
def demo_session():
    from loraflow.generate.session import GenerationSession

    return GenerationSession.from_options(GenerateConfig(device="cpu"))


def clip_cosine(folder, a: Image.Image, b: Image.Image) -> float:
    """Cosine of transformers' own CLIP image features (not loraflow's encoder)."""
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model = CLIPModel.from_pretrained(str(folder)).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(str(folder))(images=[a, b], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=0).item()


def test_clip_identity_ranks_the_panel_made_from_the_reference_first(tmp_path, tiny_clip_dir, demo_session):
    ref, other = tmp_path / "hero.png", tmp_path / "other.png"
    draw_scene(Drawn("red", "star", background="white")).save(ref)
    draw_scene(Drawn("blue", "square", "left", background="black")).save(other)
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump({
        "defaults": {"steps": 4, "seed": 0},
        "characters": [{"name": "hero", "description": "a red star", "references": [str(ref)]}],
        "scenes": [{"prompt": "{hero} in the center, white background", "init_image": str(ref), "strength": 0.5},
                   {"prompt": "{hero} in the center, white background", "init_image": str(other), "strength": 0.5}],
    }), encoding="utf-8")
    index = run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "o"), clip=str(tiny_clip_dir)),
                           session=demo_session)
    same, different = (s["scores"]["identity"]["hero"] for s in index["scenes"])
    assert same > different
    assert index["identity"] == {"scorer": "clip", "anchors": {"hero": "references"}}
    panel = Image.open(tmp_path / "o" / index["scenes"][0]["file"]).convert("RGB")
    assert same == pytest.approx(clip_cosine(tiny_clip_dir, panel, Image.open(ref).convert("RGB")), abs=1e-4)
    saved = json.loads((tmp_path / "o" / "story.json").read_text(encoding="utf-8"))
    assert saved["scores"]["min_identity"] == pytest.approx(different)


def test_clip_identity_without_references_is_anchored_to_the_first_panel(tmp_path, tiny_clip_dir, demo_session):
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump({
        "defaults": {"steps": 4, "seed": 0},
        "characters": [{"name": "hero", "description": "a red star"}],
        "scenes": [{"prompt": "a green square on the left, black background"},
                   {"prompt": "{hero} on the right, white background"},
                   {"prompt": "{hero} at the top, gray background"}],
    }), encoding="utf-8")
    index = run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "o"), clip=str(tiny_clip_dir)),
                           session=demo_session)
    first, second, third = index["scenes"]
    assert "identity" not in first["scores"] and second["scores"]["identity"] == {"hero": None}
    assert index["identity"]["anchors"] == {"hero": "scene-02"}
    a, b = (Image.open(tmp_path / "o" / s["file"]).convert("RGB") for s in (second, third))
    assert third["scores"]["identity"]["hero"] == pytest.approx(clip_cosine(tiny_clip_dir, b, a), abs=1e-4)


@pytest.mark.parametrize("description", ["a red star", {"zh": "红色的星形"}, {"en": "the hero: a red star, bright"}])
def test_demo_identity_is_colour_and_shape_of_the_definition(description):
    hero = Character(name="hero", description=description)
    assert definition(hero) == ("red", "star")
    images = [draw_scene(Drawn("red", "star", "left")), draw_scene(Drawn("red", "circle", background="gray")),
              draw_scene(Drawn("blue", "square", "top"))]
    assert DemoIdentity().identity(images, hero, None) == [1.0, 0.5, 0.0]


def test_demo_identity_reads_a_reference_when_the_description_names_no_colour(tmp_path):
    ref = tmp_path / "ref.png"
    draw_scene(Drawn("purple", "triangle")).save(ref)
    assert definition(Character(name="x", description="the hero", references=[str(ref)])) == ("purple", "triangle")
    assert DemoIdentity().identity([Image.new("RGB", (64, 64))], Character(name="y", description="the hero"),
                                   None) == [None]
