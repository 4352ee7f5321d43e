"""Regenerate README's figures from the code as it is (`make readme`), or check they match (`--check`).

Each figure sits in README between `<!-- figure:NAME -->` and `<!-- /figure:NAME -->`, and is
the output of the command named in FIGURES, run through the library, captured as plain text.
Benchmark timings are not regenerated here: they depend on the machine (`make bench` prints them).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

README = Path(__file__).resolve().parents[1] / "README.md"


DIGITS_PLOT = README.parent / "docs" / "digits_error_vs_samples.png"
PLOTS: dict[Path, bytes] = {}  # plots made by the last render, written next to README by main()


def digits_run() -> str:
    """`backlens abstract --data digits --layers 64,128,128,10 --activation relu --epochs 30`: the
    table, and its held-out error against samples (docs/digits_error_vs_samples.png, by main())."""
    import tempfile

    from backlens.workflows.abstract import AbstractOptions, run_abstract

    console = Console(file=io.StringIO(), width=130, record=True, color_system=None)
    with tempfile.TemporaryDirectory() as out:
        options = AbstractOptions(
            data="digits", layers="64,128,128,10", activation="relu", epochs=30, out=out
        )
        run_abstract(options, console)
        PLOTS[DIGITS_PLOT] = (Path(out) / "error_vs_samples.png").read_bytes()
    lines = [line.rstrip() for line in console.export_text().splitlines() if not line.startswith("wrote ")]
    return "\n".join(lines).strip()


TRANSFORMER_PLOT = README.parent / "docs" / "transformer_linearity.png"


def transformer_run() -> str:
    """`backlens abstract --arch transformer`: the table, and the linearity profile plot that
    README shows (docs/transformer_linearity.png, by main())."""
    import tempfile

    from backlens.workflows.arch_run import ArchOptions, run_arch

    console = Console(file=io.StringIO(), width=130, record=True, color_system=None)
    with tempfile.TemporaryDirectory() as out:
        run_arch(ArchOptions(arch="transformer", out=out), console)
        PLOTS[TRANSFORMER_PLOT] = (Path(out) / "linearity.png").read_bytes()
    lines = [line.rstrip() for line in console.export_text().splitlines() if not line.startswith("wrote ")]
    return "\n".join(lines).strip()


FIGURES: dict[str, Callable[[], str]] = {"digits": digits_run, "transformer": transformer_run}
SLOW = ("transformer",)  # checked by the slow test only (≈ 30 s)


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- figure:{name} -->\n```\n)(.*?)(\n```\n<!-- /figure:{name} -->)", re.S)


def render(readme: str, names: tuple[str, ...] | None = None) -> str:
    """README with every figure (or those named) regenerated."""
    for name, make in FIGURES.items():
        if names is not None and name not in names:
            continue
        pattern = _pattern(name)
        if not pattern.search(readme):
            raise SystemExit(f"README has no figure {name!r} (markers <!-- figure:{name} -->)")
        text = make()
        readme = pattern.sub(lambda m, text=text: m.group(1) + text + m.group(3), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README's figures are stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README's figures differ from what the code prints now: run `make readme`", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    for path, data in PLOTS.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
