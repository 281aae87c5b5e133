"""The CLI shell: help, version, import rules that keep `cnnviz --help` instant, usage errors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import REPO, assert_clean_error, cli, cnnviz_subprocess

PACKAGE = REPO / "cnnviz_cli"
HEAVY = {"torch", "torchvision", "matplotlib", "captum", "PIL", "numpy", "safetensors"}
UI = {"typer", "rich", "click"}
UI_MODULES = {"cli.py", "console.py", "__main__.py"}
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "config.py", "console.py", "errors.py", "formats.py", "progress.py"}
MODELS_NEVER_IMPORT = tuple(f"cnnviz_cli.{p}" for p in ("views", "plots", "report", "store", "training", "trackers"))


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions; TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.Import):
                names |= {alias.name.split(".")[0] for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                names.add(sub.module.split(".")[0])
    return names


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for sub in ast.walk(ast.parse(path.read_text())):
        if isinstance(sub, ast.Import):
            names |= {alias.name.split(".")[0] for alias in sub.names}
        elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
            names.add(sub.module.split(".")[0])
    return names


def test_core_modules_never_import_the_cli_libraries():
    core = [p for p in PACKAGE.rglob("*.py") if "commands" not in p.parts and p.name not in UI_MODULES]
    assert core
    for path in core:
        assert not (_all_imports(path) & UI), f"{path.relative_to(REPO)} imports a UI library"


def _cnnviz_imports(path: Path) -> set[str]:
    """Every cnnviz_cli module ``path`` imports, anywhere in the file, as a dotted name."""
    names: set[str] = set()
    for sub in ast.walk(ast.parse(path.read_text())):
        if isinstance(sub, ast.Import):
            names |= {alias.name for alias in sub.names if alias.name.startswith("cnnviz_cli")}
        elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0 and sub.module.startswith("cnnviz_cli"):
            names |= {sub.module, *(f"{sub.module}.{alias.name}" for alias in sub.names)}
    return names


def _package_modules(*parts: str) -> list[Path]:
    paths = sorted(PACKAGE.joinpath(*parts).rglob("*.py"))
    assert paths, parts
    return paths


def test_layers_import_only_downwards():
    """Nothing imports the commands or the CLI; the core never imports the console; plots never the store."""
    shell = {PACKAGE / "cli.py", PACKAGE / "__main__.py", *PACKAGE.joinpath("commands").glob("*.py")}
    for path in sorted(set(PACKAGE.rglob("*.py")) - shell):
        imported = _cnnviz_imports(path)
        upward = {m for m in imported if m.startswith(("cnnviz_cli.commands", "cnnviz_cli.cli"))}
        assert not upward, f"{path.relative_to(REPO)} imports {upward}"
        if path.name != "console.py":
            assert "cnnviz_cli.console" not in imported, f"{path.relative_to(REPO)} imports the console"
    for path in _package_modules("plots"):
        store = {m for m in _cnnviz_imports(path) if m.startswith("cnnviz_cli.store")}
        assert not store, f"{path.relative_to(REPO)} imports {store}: plots return figures or bytes, the store writes"
    for path in _package_modules("models"):
        above = {m for m in _cnnviz_imports(path) if m.startswith(MODELS_NEVER_IMPORT)}
        assert not above, f"{path.relative_to(REPO)} imports {above}: models are built and probed below the views"
    for package in ("views", "store", "training", "models", "data", "report"):
        assert _package_modules(package)


def test_the_package_top_level_holds_only_the_shared_modules():
    """Everything else lives in its package (DESIGN.md): a view's core in models/, data/ or training/."""
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == sorted(TOP_LEVEL)


def test_command_modules_import_heavy_libraries_only_inside_functions():
    for path in [*PACKAGE.joinpath("commands").glob("*.py"), PACKAGE / "cli.py", PACKAGE / "console.py"]:
        heavy = _top_level_imports(path) & HEAVY
        assert not heavy, f"{path.relative_to(REPO)} imports {heavy} at module level"


def test_help_and_runs_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from cnnviz_cli.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"r = CliRunner().invoke(app, ['runs', '--artifacts', {str(tmp_path)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_command():
    from cnnviz_cli.cli import COMMANDS

    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout, name
        assert (PACKAGE / "commands" / f"{name}.py").exists(), f"command module {name} is missing"


def test_every_command_has_help_text():
    from cnnviz_cli.cli import COMMANDS

    for name in COMMANDS:
        result = cli(name, "--help")
        assert result.exit_code == 0, (name, result.stderr)
        assert "--json" in result.stdout or name == "report", name


def test_version():
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("cnnviz ")


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "cnnviz_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("cnnviz ")


def test_bad_option_type_is_one_clean_line():
    result = cli("train", "--epochs", "many")
    assert_clean_error(result, 2, "--epochs", "valid integer")


def test_unknown_option_is_a_usage_error():
    result = cli("train", "--epoch", "3")
    assert_clean_error(result, 2, "--epoch")


def test_flags_are_shown_without_a_value():
    for args in (["--help"], ["train", "--help"], ["report", "--help"]):
        result = cli(*args)
        assert result.exit_code == 0
        assert "<bool>" not in result.stdout, args


def test_shell_completion_completes_commands_and_options():
    def complete(words: str, cword: int) -> list[str]:
        env = {"_CNNVIZ_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        out = cnnviz_subprocess(env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("cnnviz fil", 1) == ["filters"]
    assert complete("cnnviz filters --norm", 2) == ["--normalize"]
    assert "--install-completion" in cli("--help").stdout


def test_install_completion_writes_the_script_into_home(tmp_path):
    out = cnnviz_subprocess("--install-completion", "bash", env={"HOME": str(tmp_path), "SHELL": "/bin/bash",
                                                          "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert out.returncode == 0, out.stderr
    script = (tmp_path / ".bash_completions" / "cnnviz.sh").read_text()
    assert "_CNNVIZ_COMPLETE=complete_bash" in script and "complete -o default -F _cnnviz_completion cnnviz" in script
    assert str(tmp_path / ".bash_completions" / "cnnviz.sh") in (tmp_path / ".bashrc").read_text()
