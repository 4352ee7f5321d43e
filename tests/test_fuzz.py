"""Fuzz the edges: hypothesis draws CLI argument lists and API calls with hostile values (types,
ranges, shapes, NaN/Inf, paths, malformed CSV and backlens files). Every outcome is a success or
a BacklensError (CLI: exit 0, or 2 with an `error:` line — never the 'bug' exit 3 or a raw
exception); the earlier run directory never changes; nothing partial is left behind.

`make test` runs FAST CLI examples (and 2.5 times as many API calls); the `slow` copies run
SLOW (`make test-all`); BACKLENS_HYPOTHESIS=explore draws fresh examples each run."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import backlens
from backlens.cli import app
from backlens.errors import BacklensError
from backlens.workflows.datasets import load_csv
from backlens.workflows.mlp import parse_widths
from backlens.workflows.model_io import load_model, save_model

FAST, SLOW = 50, 1000  # CLI examples; the API tests draw 2.5 times as many
runner = CliRunner()
ROWS = "".join(f"{i % 5},{(3 * i) % 7},{i % 2}\n" for i in range(30))
CSVS = {
    "good.csv": ("a,b,label\n" + ROWS).encode(),
    "bom.csv": b"\xef\xbb\xbfa,b,label\n" + ROWS.encode(),
    "latin1.csv": "caf\xe9,b,label\n".encode("latin-1") + ROWS.encode(),
    "dup.csv": ("a,a,label\n" + ROWS).encode(),
    "cell.csv": ("a,b,label\n" + ROWS + "1,zz,0\n").encode(),
    "inf.csv": ("a,b,label\n" + ROWS + "1,-inf,0\n").encode(),
    "short.csv": ("a,b,label\n" + ROWS + "1\n").encode(),
    "header.csv": b"a,b,label\n",
    "empty.csv": b"",
    "nul.csv": b"a,b,label\n1,\x00,2\n",
}


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of things a hostile user points backlens at; `run` holds an earlier run."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "run" / "maps").mkdir(parents=True)
    (root / "run" / "results.json").write_text('{"earlier": true}')
    (root / "run" / "maps" / "m.safetensors").write_bytes(b"earlier map")
    (root / "file.txt").write_text("a file")
    (root / "junk.safetensors").write_bytes(bytes(range(256)) * 3)
    (root / "empty.safetensors").write_bytes(b"")
    backlens.Moments(3, 1).save(root / "moments.safetensors")
    save_model(backlens.build_mlp([3, 4, 1], "relu", seed=0), [3, 4, 1], "relu", root / "mlp.safetensors")
    for name, data in CSVS.items():
        (root / name).write_bytes(data)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# Values per kind: (good, bad). A heavy command always gets at least one bad value, so it must
# stop at validation with exit 2; a light one (trace, check) may also run and succeed.
INTS = (["0", "1", "3"], ["-1", str(2**40), "1.5", "abc", "", "nan"])
# epochs and batch sizes: any positive int is the user's call (2**40 epochs is valid, and long)
COUNTS = (["1", "3"], ["-1", "0", "1.5", "abc", "", "nan"])
FLOATS = (["0.3", "0.01"], ["nan", "inf", "-0.1", "0", "1.5", "abc", ""])
LAYERS = (["3,4,1", "3,2,2,1"], ["3,,1", "", "a,b", "0,1", "-3,2", "3,", "3"])
ACTS = (["relu", "tanh"], ["nope", "", "ReLU "])
PATHS = (["{new}", "{new}/deeper"], ["{file}", "{file}/under", "{run}", ""])
DATA = (["seed"], ["nope", "{file}", "missing.csv", *(f"{{root}}/{n}" for n in CSVS if n != "good.csv")])
MODELS = ([], ["{junk}", "{empty}", "{moments}", "{file}", "{root}/missing.safetensors", "x.py:fn", "{mlp}"])
METHODS = (["ridge"], ["lasso", "", "ridge,,", "reduced-rank:0", "reduced-rank:x"])
BLOCKS = (["all"], ["0:9", ":", "x", ""])
CHOICES = {"direction": (["both"], ["sideways", ""]), "loss": (["mse"], ["nope", "bce ", ""])}

HEAVY = {
    "abstract": {
        "--data": DATA, "--layers": LAYERS, "--activation": ACTS, "--epochs": COUNTS, "--seed": INTS,
        "--test-size": FLOATS, "--out": PATHS, "--model": MODELS, "--methods": METHODS,
        "--blocks": BLOCKS, "--direction": CHOICES["direction"], "--repeat": INTS, "--loss": CHOICES["loss"],
    },
    "train": {
        "--data": DATA, "--layers": LAYERS, "--activation": ACTS, "--epochs": COUNTS, "--seed": INTS,
        "--seeds": INTS, "--lr": FLOATS, "--batch-size": COUNTS, "--out": PATHS, "--backward": METHODS,
    },
    "linearity": {"--epochs": COUNTS, "--seed": INTS, "--out": PATHS, "--blocks": BLOCKS, "--arch": ACTS},
    "demo": {"--seed": INTS, "--out": PATHS},
}  # fmt: skip
LIGHT = {
    "trace": {
        "--data": (["seed"], ["nope", "{file}"]), "--layers": (["3,4,1", "3,2,1"], LAYERS[1]),
        "--activation": ACTS, "--batch-size": (["1", "4"], INTS[1]), "--seed": INTS, "--save": PATHS,
    },
    "check": {
        "--data": DATA, "--layers": (["3,4,1"], LAYERS[1]), "--activation": ACTS,
        "--batch-size": (["4"], INTS[1]), "--seed": INTS, "--loss": CHOICES["loss"],
        "--dtype": (["float64"], ["float16", "int8"]),
    },
}  # fmt: skip


@st.composite
def argv(draw: st.DrawFn) -> tuple[str, list[str], bool]:
    """(command, arguments with {placeholders}, whether a bad value is among them)."""
    command = draw(st.sampled_from(sorted({**HEAVY, **LIGHT})))
    flags = {**HEAVY, **LIGHT}[command]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), min_size=1, max_size=4, unique=True))
    bad_ones = [f for f in chosen if flags[f][1]]
    must_be_bad = draw(st.sampled_from(bad_ones)) if command in HEAVY and bad_ones else None
    args, any_bad, bad_values = [], False, []
    for flag in chosen:
        good, bad = flags[flag]
        pick_bad = flag == must_be_bad or not good or draw(st.booleans())
        value = draw(st.sampled_from(bad if pick_bad else good))
        args += [flag, value]
        bad_values += [value] if pick_bad else []
        any_bad |= pick_bad
    refused_only_for_the_earlier_run = command in HEAVY and bad_values == ["{run}"]
    if draw(st.booleans()) and not refused_only_for_the_earlier_run:  # --overwrite makes {run} valid
        args.append("--overwrite")
    return command, args, any_bad or command in HEAVY


def fill(text: str, root: Path) -> str:
    names = {"new": "fresh", "file": "file.txt", "run": "run", "junk": "junk.safetensors"}
    names |= {"empty": "empty.safetensors", "moments": "moments.safetensors", "mlp": "mlp.safetensors"}
    text = text.replace("{root}", str(root))
    for key, name in names.items():
        text = text.replace("{" + key + "}", str(root / name))
    return text


def run_cli(place: Path, drawn: tuple[str, list[str], bool]) -> None:
    command, args, bad = drawn
    if command in HEAVY and "--out" not in args and "--seed" not in args and command == "demo":
        return  # a plain `demo` is valid and takes seconds: nothing to fuzz
    before = snapshot(place)
    result = runner.invoke(app, [command, *(fill(a, place) for a in args)])
    try:
        text = " ".join(result.output.split())
        assert result.exit_code in ((0, 1, 2) if command == "check" else (0, 2)), text
        assert not isinstance(result.exception, Exception), result.exception  # a raw exception escaped
        if command in HEAVY:  # a bad value is among the arguments: refused before any work
            assert result.exit_code == 2 and ("error:" in text or "Usage:" in text), text
        after = snapshot(place)
        assert {k: v for k, v in after.items() if k.startswith("run/")} == {
            k: v for k, v in before.items() if k.startswith("run/")
        }, "the earlier run changed"
        partial = [p for p in place.rglob("*") if ".partial-" in p.name or p.name.endswith(".part")]
        assert not partial, partial
    finally:  # what a successful run wrote goes, so every example sees the same place
        for path in place.iterdir():
            if path.name not in {p.split("/")[0] for p in before}:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@fuzz(FAST)
@given(drawn=argv())
def test_cli_outcomes_are_success_or_a_clear_refusal(place: Path, drawn) -> None:
    run_cli(place, drawn)


@pytest.mark.slow
@fuzz(SLOW)
@given(drawn=argv())
def test_cli_outcomes_are_success_or_a_clear_refusal_many(place: Path, drawn) -> None:
    run_cli(place, drawn)


# API calls: a value of any kind where an argument goes
WILD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 64),  # sizes a test machine holds, or ones no machine does:
    st.sampled_from([2**40, 2**63, 2**70, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.one_of(st.integers(-3, 5), st.text(max_size=2), st.floats()), max_size=4),
    st.sampled_from(["gcv", "validation", "relu", "mse", "3,,1", "3,2,1", "sum", "mean"]),
)
ARRAYS = st.sampled_from(["ok", "nan", "inf", "wide", "1d", "empty", "int", "list", "huge"])


def array(kind: str, n: int = 12, d: int = 3) -> object:
    x = torch.randn(n, d, dtype=torch.float64)
    if kind in ("nan", "inf"):
        x[n // 2, d - 1] = float(kind)
    wrong = {
        "wide": lambda: torch.randn(n, d + 2, dtype=torch.float64),
        "1d": lambda: torch.randn(n),
        "empty": lambda: torch.zeros(0, d),
        "int": lambda: torch.ones(n, d, dtype=torch.int64),
        "list": x.tolist,
        "huge": lambda: x * 1e200,
    }
    return wrong[kind]() if kind in wrong else x


def moments_of(kind_x: str, kind_y: str) -> backlens.Moments:
    return backlens.Moments(3, 2).update(array(kind_x), array(kind_y, d=2))


LOADERS = [load_model, backlens.Moments.load, backlens.LinearMap.load, backlens.load_record]
FILES = ["junk.safetensors", "empty.safetensors", "moments.safetensors", "mlp.safetensors", "file.txt", "run"]


def small_mlp() -> torch.nn.Module:
    return backlens.build_mlp([3, 2, 1], "tanh", seed=0).double()


def y4() -> torch.Tensor:
    return torch.randn(4, dtype=torch.float64)


def fitted() -> backlens.LinearMap:
    return backlens.ridge(moments_of("ok", "ok"))


# each: (place, array kind a, array kind b, wild value w, wild value v, index k) -> anything
API: dict[str, Callable[..., object]] = {
    "Moments.update": lambda p, a, b, w, v, k: moments_of(a, b),
    "Moments(d)": lambda p, a, b, w, v, k: backlens.Moments(w, v),
    "ridge alpha": lambda p, a, b, w, v, k: backlens.ridge(moments_of("ok", "ok"), alpha=w),
    "ridge grid": lambda p, a, b, w, v, k: backlens.ridge(moments_of("ok", "ok"), grid=w),
    "ridge intercept": lambda p, a, b, w, v, k: backlens.ridge(moments_of("ok", "ok"), intercept=w),
    "ridge data": lambda p, a, b, w, v, k: backlens.ridge(moments_of(a, b), alpha="gcv"),
    "reduced_rank": lambda p, a, b, w, v, k: backlens.reduced_rank(moments_of("ok", "ok"), w, alpha=v),
    "score": lambda p, a, b, w, v, k: backlens.score(fitted(), array(a), array(b, d=2)),
    "build_mlp": lambda p, a, b, w, v, k: backlens.build_mlp(w, v if isinstance(v, str) else "relu"),
    "build_mlp seed": lambda p, a, b, w, v, k: backlens.build_mlp([3, 2], seed=w),
    "parse_widths": lambda p, a, b, w, v, k: parse_widths(w),
    "seed_regression": lambda p, a, b, w, v, k: backlens.seed_regression(w, seed=v),
    "check data": lambda p, a, b, w, v, k: backlens.check(small_mlp(), array(a, 4), array(b, 4, 1)),
    "check rtol": lambda p, a, b, w, v, k: backlens.check(small_mlp(), array("ok", 4), y4(), rtol=w),
    "check loss": lambda p, a, b, w, v, k: backlens.check(
        small_mlp(), array("ok", 4), y4(), loss=w, reduction=v
    ),
    "load_csv": lambda p, a, b, w, v, k: load_csv(
        p / sorted(CSVS)[k % len(CSVS)], v if isinstance(v, str) else "label"
    ),
    "load files": lambda p, a, b, w, v, k: LOADERS[k % len(LOADERS)](p / FILES[k % len(FILES)]),
    "load paths": lambda p, a, b, w, v, k: LOADERS[k % len(LOADERS)](w if isinstance(w, str) else p / "none"),
    "trace select": lambda p, a, b, w, v, k: backlens.trace(small_mlp(), select=w, store=v).__enter__(),
}


def run_api(place: Path, name: str, a: str, b: str, w: object, v: object, k: int) -> None:
    try:
        API[name](place, a, b, w, v, k)
    except BacklensError:
        pass  # a clear refusal: the other acceptable outcome


@fuzz(FAST * 5 // 2)
@given(name=st.sampled_from(sorted(API)), a=ARRAYS, b=ARRAYS, w=WILD, v=WILD, k=st.integers(0, 11))
def test_api_outcomes_are_success_or_a_backlens_error(place: Path, name, a, b, w, v, k) -> None:
    run_api(place, name, a, b, w, v, k)


@pytest.mark.slow
@fuzz(SLOW * 5 // 2)
@given(name=st.sampled_from(sorted(API)), a=ARRAYS, b=ARRAYS, w=WILD, v=WILD, k=st.integers(0, 11))
def test_api_outcomes_are_success_or_a_backlens_error_many(place: Path, name, a, b, w, v, k) -> None:
    run_api(place, name, a, b, w, v, k)
