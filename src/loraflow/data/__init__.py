"""Data layer: raw images -> `metadata.jsonl` (ingest) -> filtered JSONL (data-juicer recipes)
-> a training folder (export), plus stats. Each step is a plain function; `cli.py` is a shell.

Every input item ends up in exactly one of three places -- kept, rejected (with the op and stat
that rejected it) or errored (with the error) -- and each command prints that line.
"""
