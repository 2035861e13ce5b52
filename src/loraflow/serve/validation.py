"""Request bodies -> typed configs, with errors that name the field (HTTP 422).

The API takes the same pydantic configs as the CLI and config files (`GenerateConfig`, ...);
this module only turns their errors into a structured answer:

    {"error": "generate: key 'num_inference_steps' = 0: Input should be greater than or equal to 1",
     "field": "num_inference_steps", "detail": [{"loc": [...], "msg": ..., "type": ...}, ...]}
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from loraflow.config import Options, format_validation_error
from loraflow.errors import ConfigError, LoraflowError


class Invalid(LoraflowError):
    """A request body that does not validate (HTTP 422)."""

    def __init__(self, message: str, field: str | None = None, detail: list | None = None):
        super().__init__(message)
        self.field = field
        self.detail = detail or [{"loc": [field] if field else [], "msg": message, "type": "value_error"}]

    def to_json(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field, "detail": self.detail}


def parse_options(cls: type[Options], data: Any, source: str, prefix: str = ""):
    """`cls` from a JSON mapping (aliases accepted); any problem -> `Invalid` naming the field."""
    if not isinstance(data, dict):
        raise Invalid(f"{source}: expected a JSON object of option names to values, got {type(data).__name__}",
                      prefix.rstrip(".") or None)
    try:
        canonical = cls._canonical_keys(data, source)
    except ConfigError as e:
        match = re.search(r"key '([^']+)'", str(e))
        raise Invalid(str(e), prefix + match.group(1) if match else None) from None
    try:
        return cls(**canonical)
    except ValidationError as e:
        detail = [{"loc": [prefix + ".".join(str(p) for p in err["loc"])] if prefix else list(err["loc"]),
                   "msg": err["msg"], "type": err["type"]} for err in e.errors(include_url=False, include_context=False)]
        first = e.errors()[0]["loc"]
        field = prefix + ".".join(str(p) for p in first) if first else prefix.rstrip(".") or None
        raise Invalid(format_validation_error(e, source, cls), field, detail) from None
