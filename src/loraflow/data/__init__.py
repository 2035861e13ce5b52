"""Data layer: raw images -> `metadata.jsonl` (ingest) -> filtered JSONL (data-juicer recipes)
-> a training folder (export), plus stats. Each step is a plain function; `cli.py` is a shell.

Every input item ends up in exactly one of three places -- kept, rejected (with the op and stat
that rejected it) or errored (with the error) -- and each command prints that line.
"""

# The steps as Python calls (`loraflow.data.filter(recipe)`, ...), imported on first use so that
# `import loraflow.data.options` (which `loraflow --help` does) stays light. See `data/api.py`.
_API = ("ingest", "filter", "export", "stats", "DatasetReport")


def __getattr__(name: str):
    if name in _API:
        from loraflow.data import api

        return getattr(api, name)
    raise AttributeError(f"module 'loraflow.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
