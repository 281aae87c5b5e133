"""The README's set-up commands and .ci/run agree, and every install goes into a virtual environment."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fenced_commands(text: str) -> list[str]:
    """The one-line commands of the README's shell blocks (``` or ```bash)."""
    return [block.strip() for block in re.findall(r"^```(?:bash)?\n(.*?)^```", text, flags=re.M | re.S)
            if "\n" not in block.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    test_commands = [cmd for cmd in fenced_commands(readme) if "nox -s tests" in cmd]
    assert len(test_commands) == 1, test_commands
    assert ci_lines[-1] == test_commands[0]


def test_readme_installs_only_into_a_virtual_environment():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    main_job = [cmd for cmd in fenced_commands(readme) if "cnnviz train" in cmd and "apt-get" in cmd]
    assert len(main_job) == 1, main_job
    steps = [step.strip() for step in main_job[0].split("&&")]
    assert "python3 -m venv .venv" in steps
    assert "python3-venv" in steps[1].split()
    pip_steps = [step for step in steps if "pip install" in step]
    assert pip_steps and all(step.startswith(".venv/bin/pip ") for step in pip_steps), pip_steps
    assert steps[-1].startswith(".venv/bin/cnnviz train ")
    for cmd in fenced_commands(readme):
        assert not re.search(r"(^|&& )(pip3?|python3? -m pip) install", cmd), cmd
