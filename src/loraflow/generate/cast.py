"""A story's cast: characters defined once, placed into the scenes that name them.

    ip_adapter: models/IP-Adapter                  # for characters with a reference_strength
    characters:
      - name: kitten
        description: {en: "an orange kitten with a white chest", zh: "一只胸口白色的橘色小猫"}
        references: [refs/kitten-1.png]            # what its identity score compares against
        reference_strength: 0.6                    # and how strongly they steer its panels (IP-Adapter)
        lora: models/kitten.safetensors            # optional character LoRA
        lora_weight: 0.8
        trigger: ohwx kitten                       # the LoRA's trigger word(s), put before the description
    scenes:
      - {prompt: "{kitten} plays in a garden"}     # {name} is replaced by trigger + description
      - {prompt: "a rainy street", cast: [kitten]} # a listed character's words go before the prompt
      - prompt: "playing in a garden"              # two characters kept apart: each one's words act
        regions: {kitten: left, puppy: right}      # only in its region (also top, bottom, full, or a
                                                   # mask image file: white = the region)

Each panel gets the words, LoRA and references of the characters it names (`PanelCast`); the
storyboard records them in story.json per scene, and scores each character's identity.

A character placed in a region brings itself into the scene (as `cast:` does). Its region prompt is
its words, then the scene prompt with the placeholders of every regioned character taken out (the
part they share, as Regional Prompter's common prompt); the panel's own prompt, with everyone's
words, draws only where no region covers (`generate/regional_attention.py`). LoRAs still act on the
whole panel: regions confine prompts (and, with IP-Adapter, references), not weights.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from pydantic import field_validator

from loraflow.config import Options, opt
from loraflow.errors import ConfigError
from loraflow.generate.ip_references import MAX_REFERENCE_SCALE, Reference
from loraflow.generate.regions import region_problem

PLACEHOLDER = re.compile(r"\{([^{}\s|:]+)\}")  # {kitten}; `|` and `:` are left to other prompt syntaxes
CJK = re.compile(r"[\u3400-\u9fff]")
DEFAULT_LANGUAGE = "en"


class Character(Options):
    name: str = opt(..., "how scenes name it: `cast: [NAME]` or `{NAME}` in a prompt", min_length=1)
    description: str | dict[str, str] = opt(
        ..., "the words that draw it: one string, or one per language ({en: ..., zh: ...})")
    references: list[str] = opt([], "reference images of the character; its identity score compares panels "
                                     "against them (without any, against the first panel it appears in)")
    lora: str | None = opt(None, "a LoRA of this character, applied to the panels it appears in")
    lora_weight: float = opt(1.0, "weight of the character's LoRA")
    trigger: str = opt("", "the LoRA's trigger word(s), put before the description")
    reference_strength: float | None = opt(
        None, "how strongly its references steer its panels (IP-Adapter scale, through the story's ip_adapter); "
              "unset or 0: they only anchor its identity score", ge=0.0, le=MAX_REFERENCE_SCALE)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not PLACEHOLDER.fullmatch("{" + v + "}"):
            raise ValueError("a character name has no spaces, braces, '|' or ':'")
        # the name is also a folder name (--character-sheet writes OUT/sheets/NAME/): one plain, visible folder
        unsafe = v.startswith(".") or ".." in v or any(c in "/\\" or unicodedata.category(c) == "Cc" for c in v)
        if unsafe:
            raise ValueError("a character name becomes a folder name (sheets/NAME/): no '/', '\\', '..', "
                             "leading '.' or control characters")
        return v

    @field_validator("description")
    @classmethod
    def _some_description(cls, v):
        if isinstance(v, dict) and not v:
            raise ValueError("give at least one language, e.g. {en: ...}")
        return v

    def words(self, language: str) -> str:
        """Trigger and description in `language` (else English, else the first one given)."""
        d = self.description
        text = d if isinstance(d, str) else d.get(language) or d.get(DEFAULT_LANGUAGE) or next(iter(d.values()))
        return ", ".join(part for part in (self.trigger.strip(), text.strip()) if part)

    def descriptions(self) -> list[str]:
        """Every language's description (what an identity scorer may read the definition from)."""
        return [self.description] if isinstance(self.description, str) else list(self.description.values())


@dataclass(frozen=True)
class PanelRegion:
    """A character kept to one region of its panel."""

    character: str
    region: str  # an area name (regions.AREAS) or a mask image file
    prompt: str  # its words and the scene's shared words (before the story's style prefix)

    def to_json(self) -> dict:
        return {"character": self.character, "region": self.region, "prompt": self.prompt}


@dataclass(frozen=True)
class PanelCast:
    """What a scene's cast adds to its panel."""

    members: tuple[Character, ...]  # in order of first mention (placeholders, then `cast:`, then `regions:`)
    prompt: str  # the scene prompt with the cast's words in it (before the story's style prefix)
    loras: tuple[str, ...]  # `file:weight` of the cast's LoRAs
    language: str
    regions: tuple[PanelRegion, ...] = ()  # in the order of the scene's `regions:`

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.members]

    @property
    def references(self) -> tuple[Reference, ...]:
        """The IP-Adapter references of the members that steer (reference_strength above 0); a member
        kept to a region steers only there (its region is the reference's mask)."""
        where = {r.character: r.region for r in self.regions}
        return tuple(Reference(image=path, scale=c.reference_strength, mask=where.get(c.name))
                     for c in self.members if c.reference_strength for path in c.references)

    def to_json(self) -> list[dict]:
        """The resolved cast as story.json records it."""
        return [{"name": c.name, "words": c.words(self.language), "lora": _lora_arg(c),
                 "references": list(c.references), "reference_strength": c.reference_strength}
                for c in self.members]


def scene_language(prompt: str, language: str | None) -> str:
    """The story's language, else zh for a prompt with Chinese characters, else en."""
    return language or ("zh" if CJK.search(prompt) else DEFAULT_LANGUAGE)


def cast_problem(characters: list[Character], scenes) -> str | None:
    """The first mistake in a story's cast, as `key: what is wrong`, or None."""
    names = [c.name for c in characters]
    seen = set()
    for i, c in enumerate(characters):
        if c.name in seen:
            return f"characters[{i}].name: '{c.name}' is defined twice"
        seen.add(c.name)
        if c.reference_strength and not c.references:
            return f"characters[{i}].reference_strength: '{c.name}' has no references to steer its panels with"
    known = ", ".join(names) or "none defined"
    for k, scene in enumerate(scenes):
        for name in scene.cast:
            if name not in seen:
                return f"scenes[{k}].cast: unknown character '{name}' (characters: {known})"
        for name in PLACEHOLDER.findall(scene.prompt):
            if name not in seen:
                return f"scenes[{k}].prompt: unknown character '{{{name}}}' (characters: {known})"
        for name, region in scene.regions.items():
            if name not in seen:
                return f"scenes[{k}].regions.{name}: unknown character '{name}' (characters: {known})"
            problem = region_problem(region)
            if problem:
                return f"scenes[{k}].regions.{name}: {problem}"
    return None


def resolve_cast(characters: list[Character], scene, index: int, language: str | None = None) -> PanelCast:
    """The scene's prompt with `{name}` replaced by the character's words, and the words of characters
    that are only listed in `cast:` put in front; their LoRAs and references come with them."""
    problem = cast_problem(characters, [scene])
    if problem:
        raise ConfigError(problem.replace("scenes[0]", f"scenes[{index}]", 1))
    by_name = {c.name: c for c in characters}
    lang = scene_language(scene.prompt, language)
    mentioned = list(dict.fromkeys(PLACEHOLDER.findall(scene.prompt)))
    prompt = PLACEHOLDER.sub(lambda m: by_name[m.group(1)].words(lang), scene.prompt)
    listed = [n for n in dict.fromkeys([*scene.cast, *scene.regions]) if n not in mentioned]
    if listed:
        prompt = ",".join([by_name[n].words(lang) for n in listed] + [prompt])
    members = tuple(by_name[n] for n in mentioned + listed)
    regions = tuple(PanelRegion(n, r, _region_prompt(by_name, scene, n, lang)) for n, r in scene.regions.items())
    return PanelCast(members, prompt, tuple(_lora_arg(c) for c in members if c.lora), lang, regions)


def _region_prompt(by_name: dict[str, Character], scene, name: str, lang: str) -> str:
    """`name`'s words, then the scene prompt without any regioned character (their words belong to
    their own regions) but with the words of the unregioned ones."""
    shared = PLACEHOLDER.sub(lambda m: "" if m.group(1) in scene.regions else by_name[m.group(1)].words(lang),
                             scene.prompt)
    others = [by_name[n].words(lang) for n in dict.fromkeys(scene.cast)
              if n not in scene.regions and n not in PLACEHOLDER.findall(scene.prompt)]
    parts = [by_name[name].words(lang), *others, " ".join(shared.split()).strip(" ,，")]
    return ",".join(p for p in parts if p)


def _lora_arg(c: Character) -> str | None:
    return f"{c.lora}:{c.lora_weight:g}" if c.lora else None
