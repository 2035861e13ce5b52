"""User-facing errors. The CLI prints them as one line (`error: ...`) and exits with code 2;
the HTTP API turns them into 4xx answers. Anything else is a bug and keeps its traceback."""


class LoraflowError(Exception):
    """Base class: the message is one line that names what was wrong and what would be accepted."""


class ConfigError(LoraflowError):
    """A bad option, config key, or config file."""


class ModelLoadError(LoraflowError):
    """A model folder/checkpoint is missing, partial, unsafe or of an unknown family."""


class InputError(LoraflowError):
    """A bad input file (image, prompt file, story, dataset manifest)."""
