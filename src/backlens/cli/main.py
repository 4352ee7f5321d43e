"""The `backlens` command line: a thin shell over the library."""

from __future__ import annotations

import sys
import traceback
import warnings

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import BacklensError, BacklensWarning
from ..workflows.user_model import UserModelError

app = typer.Typer(
    help="See what backpropagation does inside a PyTorch network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide enough for the result tables when output goes to a file or pipe.
console = Console(width=None if sys.stdout.isatty() else 130)


@app.callback()
def main_callback() -> None:
    """backlens: trace, check and abstract backpropagation in PyTorch models."""


# The library's errors name Python arguments; here they are said as the flags that feed them.
FLAGS = {
    "name": "--data",  # load_dataset(name)
    "widths": "--layers",
    "text": "--layers",  # parse_widths(text)
    "target": "--target",
    "activation": "--activation",
    "loss": "--loss",
    "reduction": "--reduction",
    "dtype": "--dtype",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "epochs": "--epochs",
    "blocks": "--blocks",
    "methods": "--methods",
    "direction": "--direction",
    "test_size": "--test-size",
    "out": "--out",
    "model": "--model",
    "repeat": "--repeat",
    "overwrite": "--overwrite",
    "arch": "--arch",
    "weights": "--weights",
    "checkpoint_every": "--checkpoint-every",
    "resume": "--resume",
}


def flag_for(argument: str) -> str:
    """The flag for a library argument name ('widths' -> '--layers'); others stay as they are."""
    return FLAGS.get(argument, argument)


def run_or_exit(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call fn; print a BacklensError as one clear line, naming the flag, and exit 2.

    backlens' own warnings are printed once each as a plain line, without a source path.
    """
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, BacklensWarning):
            if str(message) not in shown:
                shown.add(str(message))
                console.print(f"[yellow]warning ({category.__name__}):[/yellow] {message}")
        else:
            original(message, category, filename, lineno, file, line)

    original = warnings.showwarning
    warnings.showwarning = show
    try:
        return fn(*args, **kwargs)
    except BacklensError as error:
        console.print(f"[red]error:[/red] {escape(error.render(flag_for(error.argument)))}")
        if isinstance(error, UserModelError) and error.__cause__ is not None:
            traceback.print_exception(error.__cause__)  # the user's own code failed: show where
        raise typer.Exit(2) from None
    finally:
        warnings.showwarning = original


# Commands kept in their own modules register themselves on `app` when imported.
from . import abstract, check, demo, linearity, report, trace, train  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
