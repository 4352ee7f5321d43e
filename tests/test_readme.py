"""README cannot rot: every Python code block in it runs, in a fresh namespace, as written."""

import importlib.util
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _figures_tool():  # tools/ is not a package: load the script by path
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "tools" / "readme_figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3  # "In Python", streamed statistics, "Blocks in Python"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    code = compile(BLOCKS[index], f"README.md python block {index}", "exec")
    exec(code, {"__name__": f"readme_block_{index}"})


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in _figures_tool().SLOW else n
        for n in _figures_tool().FIGURES
        if n not in _figures_tool().TIMED  # a timing cannot be compared
    ],
)
def test_readme_figures_are_what_the_code_prints_now(name: str) -> None:
    tool = _figures_tool()
    current = README.read_text(encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run's own warnings are not the point here
        fresh = tool.render(current, (name,))
    assert fresh == current, "README's figures are stale: run `make readme`"


def test_the_figure_check_can_fail() -> None:
    tool = _figures_tool()
    stale = README.read_text(encoding="utf-8").replace("seed 0: classification", "seed 0: regression", 1)
    assert tool._pattern("digits").search(stale) and stale != README.read_text(encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tool.render(stale, ("digits",)) != stale
