"""README's promises: two set-up commands at the top, and CI runs the second one verbatim."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", head, flags=re.S)]


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    install_demo, install_test = _setup_commands()
    assert "distill-audit demo" in install_demo and "pip install" in install_demo
    assert "pytest" in install_test and '".[dev]"' in install_test


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _setup_commands()[1] in ci
