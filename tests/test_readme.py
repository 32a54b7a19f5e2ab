"""The README's two quickstart commands are what CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_quickstart_commands():
    main, tests = quickstart_commands()
    assert main.endswith("dvc repro") and tests.endswith("-m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = quickstart_commands()
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
