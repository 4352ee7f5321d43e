"""The HTML building blocks: well-formed, escaped, the notebook's 2-decimal numbers, shading."""

import math

import numpy as np
import pytest
import torch

from backlens.display import html_table, key_values, notebook_number, sparkline, tensor_table, wrap
from html_check import cells, parse


@pytest.mark.parametrize(
    "value, expected",
    [
        (1.0, "1.00"),
        (-0.004, "0.00"),  # rounds to zero: no "-0.00"
        (-1.005, "-1.00"),  # binary 1.005 lies below: as numpy's printing
        (12.3456, "12.35"),
        (3, "3"),
        (None, "—"),
        (float("nan"), "nan"),
        (np.float32(0.5), "0.50"),
    ],
)
def test_notebook_number(value, expected):
    assert notebook_number(value) == expected


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor([[1.0, -2.0], [0.001, 3.14159]]),
        torch.arange(6.0).reshape(1, 2, 3),
        torch.tensor(2.5),
        np.array([0.5, -0.25]),
    ],
)
def test_tensor_table_holds_every_entry_to_two_decimals(tensor):
    shown = cells(tensor_table(tensor, "t"))
    flat = np.asarray(tensor, dtype=np.float64).reshape(-1)
    assert shown[1:] == [notebook_number(float(v)) for v in flat]
    assert shown[0].startswith("t: shape")


def test_tensor_table_cuts_large_tensors_and_says_so():
    shown = cells(tensor_table(torch.ones(20, 30), "big"))
    assert shown[0] == "big: shape (20, 30), first 12 × 12 shown"
    assert len(shown) == 1 + 12 * 12


def test_tensor_table_shades_by_sign_and_size():
    html = tensor_table(torch.tensor([[2.0, -1.0, 0.0]]))
    assert "rgba(214,39,40,0.60)" in html  # the largest positive: full red
    assert "rgba(31,119,180,0.30)" in html  # half the scale, negative: half blue
    assert html.count("background") == 2  # zero is left white


def test_text_is_escaped():
    html = html_table(["<b>"], [["a & <script>"]], caption='"q"')
    assert "<script>" not in html
    assert cells(html) == ['"q"', "<b>", "a & <script>"]


def test_key_values_and_wrap_are_well_formed():
    html = wrap(key_values({"n": 4, "alpha": 0.123456, "method": "ridge"}))
    assert cells(html)[-6:] == ["n", "4", "alpha", "0.1235", "method", "ridge"]


def test_sparkline_is_inline_svg_with_one_point_per_value():
    values = [10.0, 1.0, 0.1, 0.0]
    svg = sparkline(values)
    checker = parse(svg)
    assert checker.tags == ["svg", "title", "polyline"]
    points = svg.split('points="')[1].split('"')[0].split()
    assert len(points) == len(values)
    ys = [float(p.split(",")[1]) for p in points]
    assert ys == sorted(ys)  # a falling spectrum falls (SVG's y grows downward)
    assert math.isclose(ys[0], 1.0) and math.isclose(ys[-1], 31.0)  # top and bottom of a 32 px box
    assert "http" not in svg  # nothing a browser would fetch


def test_sparkline_of_nothing_says_so():
    assert "no spectrum" in sparkline([0.0, 0.0])


@pytest.mark.parametrize("broken", ["<div><span></div>", "<table><tr><td>1</td></tr>", "</p>"])
def test_the_well_formedness_check_can_fail(broken):
    with pytest.raises(AssertionError):
        parse(broken)
