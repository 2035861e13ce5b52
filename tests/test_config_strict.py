"""Config validation refuses, in every command's options, what pydantic's lax mode would let through:
a boolean where a number is wanted (`max_steps: true` trained one step), NaN and infinity (NaN passes
every bound), and device names that are no device."""
from __future__ import annotations

import importlib
import math

import pytest
from pydantic import ValidationError

from loraflow.config import Options, _wants_number
from loraflow.errors import ConfigError

MODULES = ("loraflow.generate.options", "loraflow.generate.storyboard", "loraflow.train.config",
           "loraflow.data.options", "loraflow.data.recipe", "loraflow.data.ops.registry", "loraflow.serve.options",
           "loraflow.models.lora.cli", "loraflow.models.lora.tools_cli", "loraflow.score.run")


def _all_options() -> list[type[Options]]:
    for name in MODULES:
        importlib.import_module(name)
    found, todo = [], list(Options.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: c.__qualname__)


def _numeric_fields():
    for cls in _all_options():
        for name, field in cls.model_fields.items():
            if _wants_number(field.annotation):
                yield cls, name, field


def test_there_are_numeric_fields_to_check():
    assert len(list(_numeric_fields())) > 50


def _errors_on(cls, name: str, value) -> list[str]:
    """Messages of the errors pydantic reports on field `name` (other required fields may also err)."""
    try:
        cls.model_validate({name: value})
    except ValidationError as e:
        return [err["msg"] for err in e.errors() if err["loc"][:1] == (name,)]
    return []


def test_a_boolean_is_refused_by_every_numeric_field():
    for cls, name, _ in _numeric_fields():
        assert any("true/false" in m for m in _errors_on(cls, name, True)), (cls.__name__, name)


def test_nan_is_refused_by_every_float_field_and_infinity_unless_the_default_is_infinite():
    for cls, name, field in _numeric_fields():
        if float not in _flat(field.annotation):
            continue
        assert _errors_on(cls, name, math.nan), (cls.__name__, name)
        default = field.default
        if not (isinstance(default, float) and math.isinf(default)):
            assert _errors_on(cls, name, "inf"), (cls.__name__, name)


def _flat(annotation):
    from loraflow.config import _flat_args

    return _flat_args(annotation)


def test_open_max_bounds_keep_their_infinite_default():
    from loraflow.data.ops.image_filters import ImageSharpnessParams

    assert ImageSharpnessParams.from_dict({"max_sharpness": math.inf}).max_sharpness == math.inf


@pytest.mark.parametrize("device", ["quantum", "cuda:x", "gpu", "CUDA", "cpu:0:1", ""])
def test_unknown_device_names_are_refused(device):
    from loraflow.train.config import TrainConfig

    with pytest.raises(ConfigError, match="'device'"):
        TrainConfig.from_dict({"device": device})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps", "xpu:0"])
def test_known_device_names_are_accepted(device):
    from loraflow.generate.options import GenerateConfig

    assert GenerateConfig.from_dict({"device": device}).device == device
