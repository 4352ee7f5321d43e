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
    "run_dir": "DIR",  # backlens report DIR
}


def flag_for(argument: str) -> str:
    """The flag for a library argument name ('widths' -> '--layers'); others stay as they are."""
    return FLAGS.get(argument, argument)


# Exit codes: 2 bad input (a BacklensError), 3 a bug in backlens, 130 interrupted (as shells count Ctrl-C).
EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 2, 3, 130


def run_or_exit(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call fn; print a BacklensError as one clear line, naming the flag, and exit 2; anything
    else is a bug in backlens: one line saying so, the traceback, exit 3.

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
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        console.print(
            "[red]interrupted:[/red] nothing was written at --out (a run is written whole or not at all)"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as error:  # not a BacklensError: backlens failed to check something first
        console.print(
            f"[red]error: this is a bug in backlens[/red] ({type(error).__name__}: "
            f"{escape(str(error)[:200])}); please report it with the traceback below"
        )
        traceback.print_exception(error)
        raise typer.Exit(EXIT_BUG) from None
    finally:
        warnings.showwarning = original


# Commands kept in their own modules register themselves on `app` when imported.
from . import abstract, check, demo, linearity, report, trace, train  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
