"""HTML building blocks for rich display in Jupyter and for run reports: no backlens types here,
so every layer may import it (the import contract in pyproject keeps it that way)."""

from .html import (
    STYLE,
    html_table,
    key_values,
    notebook_number,
    section,
    sparkline,
    tensor_table,
    wrap,
)

__all__ = [
    "STYLE",
    "html_table",
    "key_values",
    "notebook_number",
    "section",
    "sparkline",
    "tensor_table",
    "wrap",
]
