"""Shared fixtures: tiny models built in-process (never downloaded), saved once per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that tries to reach a hub fails loudly
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

FAMILIES = ("sd15", "sdxl", "kolors")


def pytest_configure(config):
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`tiny_model_dir("sdxl")` -> path of a tiny diffusers folder of that family (built once)."""
    from loraflow.models.tiny import save_tiny_model

    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = save_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_session():
    """`tiny_session("kolors")` -> a GenerationSession over the in-process tiny model (shared)."""
    from loraflow.generate.session import GenerationSession
    from loraflow.models.loading import load_pipeline

    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = GenerationSession(load_pipeline(f"tiny:{family}", device="cpu"))
        return cache[family]

    return get
