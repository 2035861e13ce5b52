"""Which prompt each scored image was made from.

Sources, in the order `prompts_for` tries them:

* a storyboard index (`story.json` written by `loraflow storyboard`): `scenes[].file` -> `prompt`;
* a story file (`.yaml`/`.json` as `loraflow storyboard` reads it): scene k (from 1) is the image
  `scene-XX.png` with XX = k, and its prompt has the story's style prefix, as it was generated;
* no prompts file: the prompt in the PNG's own A1111 `parameters` text.
"""
from __future__ import annotations

import re
from pathlib import Path

from loraflow.config import read_mapping_file
from loraflow.errors import ConfigError, InputError
from loraflow.generate.infotext import parse_infotext, read_infotext
from loraflow.generate.story import Story

_SCENE_FILE = re.compile(r"^scene-(\d+)\.\w+$")


def prompts_for(images: list[Path], prompts_file: str | None) -> list[str | None]:
    """One prompt (None when unknown) per image path."""
    if prompts_file is None:
        return [_infotext_prompt(p) for p in images]
    by_name, by_scene = _read_prompts_file(Path(prompts_file))
    out: list[str | None] = []
    for path in images:
        if by_name is not None:
            out.append(by_name.get(path.name))
            continue
        m = _SCENE_FILE.match(path.name)
        k = int(m.group(1)) if m else 0
        out.append(by_scene[k - 1] if 1 <= k <= len(by_scene) else None)
    return out


def _infotext_prompt(path: Path) -> str | None:
    try:
        text = read_infotext(path)
    except InputError:
        return None  # the image itself is reported unreadable by the caller
    return (parse_infotext(text)["prompt"] or None) if text else None


def _read_prompts_file(path: Path) -> tuple[dict[str, str | None] | None, list[str]]:
    """({file name: prompt}, []) for a storyboard index, (None, [scene prompts]) for a story."""
    if path.suffix not in (".json", ".yaml", ".yml"):
        raise InputError(f"--prompts {path}: expected a story.json or a story .yaml/.json file")
    try:
        data = read_mapping_file(path)
    except ConfigError as e:
        raise InputError(str(e).replace("config file", "prompts file")) from None
    scenes = data.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise InputError(f"{path}: no 'scenes' list; expected a story.json or a story file")
    if all(isinstance(s, dict) and "file" in s for s in scenes):
        return {str(s["file"]): str(s.get("prompt") or "") or None for s in scenes}, []
    story = Story.from_dict(data, source=str(path))
    return None, [story.scene_prompt(scene) for scene in story.scenes]
