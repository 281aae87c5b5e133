"""Nox sessions for cnnviz: tests, lint and the benchmark."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest options after --, e.g. nox -s tests -- -k store)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "cnnviz_cli", "tests", "noxfile.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark cnnviz against the tutorial's pipeline (options after --, e.g. -- --quick)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/bench.py", *session.posargs)
