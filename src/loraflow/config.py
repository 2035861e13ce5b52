"""Typed options shared by the CLI, config files and the HTTP API.

Each command's options are one pydantic model (`Options` subclass). A field is described once,
with `opt(...)`, and from that description we derive:

* the CLI flag (`guidance_scale` -> `--guidance-scale`, plus any aliases such as `--cfg-scale`),
* the YAML/JSON config-file key (plus aliases such as the tutorial's `cfg_scale`),
* validation with one-line errors that name the key (`unknown key 'lora_rnk'`).

Precedence when a command runs: field default < config file < flags given on the command line.
This module must stay light: it is imported by `loraflow --help`, which never imports torch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from loraflow.errors import ConfigError


def opt(default: Any = None, help: str = "", *, aliases: tuple[str, ...] = (), cli: bool = True, **kw: Any):
    """A config field: default value, one-line help, and alternative names (config keys or flags).

    `aliases` are given as config-key spellings (`cfg_scale`); each also becomes a CLI flag
    (`--cfg-scale`). `cli=False` keeps a field out of the command line (file/API only).
    """
    extra = {"aliases": list(aliases), "cli": cli}
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda d=default: type(d)(d), description=help, json_schema_extra=extra, **kw)
    return Field(default, description=help, json_schema_extra=extra, **kw)


class Options(BaseModel):
    """Base for every command's options: unknown keys are an error, values are type-checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _accept_aliases(cls, data: Any) -> Any:
        # So Python callers may use the same alias names as files and flags: Config(steps=2),
        # and pathlib paths wherever a file name is asked for: Config(out=Path("outputs")).
        if not isinstance(data, dict):
            return data
        return {k: _fspath(v) for k, v in cls._canonical_keys(data, cls.__name__).items()}

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode turns `max_steps: true` into 1; a boolean where a number is wanted is
        # always a mistake in a config file or a JSON body.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and isinstance(value, bool) and _wants_number(field.annotation):
            raise ValueError("a number is wanted here, not true/false")
        if info.field_name == "device" and isinstance(value, str):
            check_device_name(value)
        if info.field_name in OUTPUT_FOLDER_FIELDS and isinstance(value, str) and value and Path(value).is_file():
            # caught here, not after minutes of work when the first file is written into it
            raise ValueError("names an existing file; give an output folder")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # NaN passes every `ge`/`le` bound (all comparisons are False) and poisons what it touches;
        # infinity is accepted only where the field's own default is infinite (an open max bound).
        field = cls.model_fields.get(info.field_name or "")
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, float) and math.isnan(item):
                raise ValueError("NaN is not a number; give a finite value")
            if isinstance(item, float) and math.isinf(item) and not _infinite_default(field):
                raise ValueError("infinity is not allowed here; give a finite value")
        return value

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config"):
        """Validate a mapping (a parsed file, an API body); aliases are mapped to canonical names."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of option names to values, got {type(data).__name__}")
        data = cls._canonical_keys(data, source)
        try:
            return cls(**data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source, cls)) from None

    @classmethod
    def from_value(cls, value: Any, source: str, text_form: str, parse_text):
        """An item of a repeatable option as flags, files and HTTP bodies give it: an instance, a mapping,
        or its text form (`parse_text(text)`, None when the text is not of that form); a one-line
        ConfigError naming `text_form` otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value, source=source)
        parsed = parse_text(value) if isinstance(value, str) else None
        if parsed is None:
            raise ConfigError(f"{source}: expected {text_form} or a mapping, got {value!r}")
        return parsed

    @classmethod
    def from_file(cls, path: str | Path):
        return cls.from_dict(read_mapping_file(path), source=str(path))

    @classmethod
    def _canonical_keys(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        alias_map = cls.alias_map()
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = alias_map.get(str(key).replace("-", "_"), str(key))
            if name in out:
                raise ConfigError(f"{source}: key '{key}' given twice (also as '{name}')")
            out[name] = value
        unknown = [k for k in out if k not in cls.model_fields]
        if unknown:
            known = ", ".join(sorted(cls.model_fields))
            raise ConfigError(f"{source}: unknown key '{unknown[0]}'; known keys: {known}")
        return out

    @classmethod
    def alias_map(cls) -> dict[str, str]:
        amap = {}
        for name, field in cls.model_fields.items():
            for alias in _extra(field).get("aliases", []):
                amap[alias.replace("-", "_")] = name
        return amap

    def merged(self, overrides: dict[str, Any], source: str = "command line"):
        """A copy with `overrides` (canonical or alias keys) applied and re-validated. Only the values
        that were set are carried over: a default is no input, and some defaults (None for "not
        chosen yet") would not validate as one."""
        data = self.model_dump(exclude_unset=True)
        data.update(self._canonical_keys(overrides, source))
        return type(self).from_dict(data, source)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False, allow_unicode=True)

    # ---- command line ---------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        """Add one flag per field. Defaults are suppressed so only flags the user gave are seen."""
        for name, field in cls.model_fields.items():
            extra = _extra(field)
            if name in skip or not extra.get("cli", True):
                continue
            flags = [f"--{name.replace('_', '-')}"] + [f"--{a.replace('_', '-')}" for a in extra.get("aliases", [])]
            kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field)}
            kind, inner = _cli_kind(field.annotation)
            if kind == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif kind == "list":
                kwargs["action"] = "append"
                kwargs["metavar"] = name.upper().rstrip("S")
                if inner in (int, float):
                    kwargs["type"] = inner
            elif kind == "choice":
                kwargs["choices"] = list(inner)
            elif kind in (int, float):
                kwargs["type"] = kind
                kwargs["metavar"] = name.upper()
            else:
                kwargs["metavar"] = name.upper()
            parser.add_argument(*flags, **kwargs)

    @classmethod
    def from_cli(cls, args: argparse.Namespace, config_path: str | Path | None = None, **fixed: Any):
        """Defaults < config file < flags. `fixed` are values set by positional arguments."""
        base: dict[str, Any] = read_mapping_file(config_path) if config_path else {}
        source = str(config_path) if config_path else "command line"
        base = cls._canonical_keys(base, source)
        given = {k: v for k, v in vars(args).items() if k in cls.model_fields}
        given.update({k: v for k, v in fixed.items() if v is not None})
        base.update(given)
        return cls.from_dict(base, source)


OUTPUT_FOLDER_FIELDS = ("out", "output")  # every command's output folder is named one of these


DEVICE_NAME = re.compile(r"auto|cpu|mps|(cuda|xpu|npu)(:\d+)?")


def parsed_before(field: str, parser):
    """A pydantic "before" validator of `field` that runs `parser` on the raw value: the one-line
    ConfigError of a text parser (`TYPE:IMAGE[:SCALE]`, `REGION:PROMPT`, ...) becomes the field's
    validation error, so files, flags and HTTP bodies report it alike.

        _parse_units = parsed_before("control", parse_units)   # in an Options class body
    """
    def validate(cls, value):
        try:
            return parser(value)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    validate.__name__ = f"_parse_{field}"
    return field_validator(field, mode="before")(classmethod(validate))


def check_device_name(device: str) -> str:
    """`auto`, `cpu`, `mps`, `cuda`, `cuda:N` (also xpu/npu); anything else is a typo. Whether the
    device exists on this machine is checked when a command runs (`models.loading.resolve_device`)."""
    if not DEVICE_NAME.fullmatch(device):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def split_weighted(text: str, default: float | None, *, what: str = "weight") -> tuple[str, float | None]:
    """`NAME[:NUMBER]` -> (NAME, NUMBER): `style.safetensors:0.8`, `ref.png:0.6`; no number, or an empty
    one (`style:`), gives `default`. NAME may itself hold colons: a Windows drive (`C:\\x.safetensors:0.8`)
    or any colon followed by a folder separator belongs to the name. Anything else after the last colon
    must be a finite number; otherwise a one-line ConfigError naming `text` and `what`."""
    head, sep, tail = text.rpartition(":")
    if not sep or "/" in tail or "\\" in tail:
        return text, default  # no colon, or one inside the path (`C:\x.safetensors`, `//host:/x`)
    if not head:
        raise ConfigError(f"{text!r}: no name before ':{tail}' (expected NAME[:{what.upper()}])")
    if not tail.strip():
        return head, default
    try:
        number = float(tail)
    except ValueError:
        if _is_drive(head):
            return text, default  # `C:x.safetensors`, a drive-relative Windows path
        raise ConfigError(f"{text!r}: {what} {tail!r} is not a number (expected NAME[:{what.upper()}])") from None
    if not math.isfinite(number):
        raise ConfigError(f"{text!r}: {what} {tail!r} is not a finite number")
    return head, number


def _is_drive(head: str) -> bool:
    """`C`, the part before the colon of `C:x.safetensors` (a Windows drive letter)."""
    return len(head) == 1 and head.isalpha()


def _wants_number(annotation: Any) -> bool:
    args = set(_flat_args(annotation))
    return bool(args & {int, float}) and bool not in args


def _flat_args(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [a for arg in get_args(annotation) for a in _flat_args(arg)]
    return [annotation]


def _infinite_default(field) -> bool:
    default = getattr(field, "default", None)
    return isinstance(default, float) and math.isinf(default)


def _fspath(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_fspath(v) for v in value)
    return value


def _extra(field) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _help(field) -> str:
    text = field.description or ""
    default = field.get_default(call_default_factory=True)
    if default not in (None, [], {}, ""):
        text += f" (default: {default})"
    return text.replace("%", "%%")


def _cli_kind(annotation: Any) -> tuple[Any, Any]:
    """Classify a field type for argparse: ('bool'|'list'|'choice'|int|float|str, detail)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _cli_kind(args[0]) if len(args) == 1 else (str, None)
    if annotation is bool:
        return "bool", None
    if origin in (list, tuple):
        inner = get_args(annotation)[0] if get_args(annotation) else str
        return "list", inner
    if origin is Literal:
        return "choice", get_args(annotation)
    if annotation in (int, float):
        return annotation, None
    return str, None


def format_validation_error(e: ValidationError, source: str, cls: type[BaseModel] | None = None) -> str:
    """One line naming the first bad key, its value and what would be accepted."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else type(value).__name__
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a check across keys (min > max): its message names them
        return f"{source}: {msg}{more}"
    return f"{source}: key '{loc}' = {shown}: {msg}{more}"


def read_mapping_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON/TOML file that must hold a mapping; one-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # parse errors from yaml/json/toml all end up here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot parse: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
