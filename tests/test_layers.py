"""The package keeps its layers: the import contract holds (and can fail), torch privates stay in
one module, and importing backlens leaves matplotlib's backend alone."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the venv's, beside its python


def lint_imports(config: Path, package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the backlens found in `package_parent`, with the contracts in `config`."""
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the dev extra (make setup)"
    # --config works on every import-linter 2.x (newer ones also take the file positionally);
    # --no-cache: no cache directory left in the repository or the copy
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=package_parent,
        env={**os.environ, "PYTHONPATH": str(package_parent), "COLUMNS": "200"},  # no wrapped lines
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contract_holds() -> None:
    run = lint_imports(ROOT / "pyproject.toml", SRC)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_import_contract_fails_when_the_linear_core_imports_a_workflow(tmp_path: Path) -> None:
    shutil.copytree(SRC / "backlens", tmp_path / "backlens", ignore=shutil.ignore_patterns("__pycache__"))
    ridge = tmp_path / "backlens" / "linear" / "ridge.py"
    ridge.write_text(ridge.read_text() + "\nfrom ..workflows import train  # noqa: E402, F401\n")
    config = tmp_path / "contracts.toml"
    shutil.copy(ROOT / "pyproject.toml", config)
    run = lint_imports(config, tmp_path)
    assert run.returncode != 0, run.stdout
    assert "linear core imports no recording, blocks, workflows or cli BROKEN" in run.stdout
    assert "backlens.linear.ridge -> backlens.workflows.train" in run.stdout


# Private torch names and attributes; only backlens/torch_private.py may use them. The list
# covers what the package has used and the usual suspects (module internals, hook dicts).
TORCH_PRIVATE = re.compile(
    r"\b(?:torch|nn)(?:\.\w+)*\._[A-Za-z]"  # torch._C, torch._lazy_clone, nn.modules.x._Base
    r"|\bfrom torch[\w.]* import _[A-Za-z]|\bfrom torch(?:\.\w+)*\._"
    r"|\bgetattr\(\s*(?:torch|nn)[\w.]*\s*,\s*[\"']_"  # getattr(torch, "_lazy_clone", None)
    r"|\._(?:sequence_nr|execution_engine|cdata|version|parameters|buffers|modules)\b"
    r"|\._(?:forward|backward)(?:_pre)?_hooks\b"
)


def test_only_torch_private_touches_torch_privates() -> None:
    package = SRC / "backlens"
    offenders: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if name == "torch_private.py":
            continue
        hits = [line.strip() for line in path.read_text().splitlines() if TORCH_PRIVATE.search(line)]
        if hits:
            offenders[name] = hits
    assert not offenders, f"use backlens.torch_private instead: {offenders}"


def test_importing_backlens_keeps_the_matplotlib_backend(tmp_path: Path) -> None:
    # "svg" works headless and is not the Agg that plots.py used to force at import
    code = (
        "import matplotlib\n"
        "import backlens\n"
        "print(matplotlib.get_backend())\n"
        "import backlens.workflows.plots as plots\n"
        "print(matplotlib.get_backend())\n"
        "fig, axes = plots.panels(2)\n"
        "axes[0].plot([1, 2], [1, 4], label='x')\n"
        "plots.style_axes(axes[0], 'a', 'b', 'c')\n"
        f"plots.save_figure(fig, {str(tmp_path / 'fig.png')!r})\n"
        "import sys\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == ["svg", "svg", "svg False"]
    assert (tmp_path / "fig.png").read_bytes().startswith(b"\x89PNG")
