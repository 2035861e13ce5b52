"""Shared fixtures: a small generated dataset of coloured shapes (see train_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import make_shapes_dataset


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """2 shared cores; also makes runs comparable bit for bit (same reduction order)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))
