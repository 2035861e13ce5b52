"""Fixtures for the data tests (helpers live in data_helpers.py)."""
import pytest


@pytest.fixture
def data_cli(monkeypatch):
    """`loraflow.cli.main` with only the data commands registered (other packages are built
    by other people and may be mid-change); returns main."""
    import loraflow.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("loraflow.data.cli",))
    return cli.main
