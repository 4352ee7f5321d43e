"""The `backlens` command line: a typer app, one module per command."""

from .main import app, main

__all__ = ["app", "main"]
