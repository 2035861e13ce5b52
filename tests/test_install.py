"""The README's install is the whole install: CI runs exactly its commands, and no test hides a
missing Python package behind a skip (under `.[dev]` only GPU, real-weight, dj-process and
no-Chromium tests may skip)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_setup_commands() -> list[str]:
    setup = REPO.joinpath("README.md").read_text(encoding="utf-8").split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_install_and_test_commands_and_no_other_install():
    # CI may add pip's -q; anything else that differs would let CI pass where a user's install fails
    ci = [re.sub(r"^pip install -q ", "pip install ", line.strip())
          for line in REPO.joinpath(".ci", "run").read_text(encoding="utf-8").splitlines()]
    install, test = _readme_setup_commands()
    assert install in ci and test in ci, (install, test)
    assert [line for line in ci if "pip install" in line and "--upgrade pip" not in line] == [install]


def test_no_test_skips_because_a_python_package_is_missing():
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted(REPO.joinpath("tests").rglob("*.py"))
                 if path.name != Path(__file__).name
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "importorskip" in line]
    assert offenders == [], "import the package (the dev install has it) so its absence fails: " + ", ".join(offenders)
