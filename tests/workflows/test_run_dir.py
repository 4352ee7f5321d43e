"""Run directories: checked before work, written whole or not at all, replaced whole; a real
`backlens demo` interrupted mid-run (SIGINT, SIGKILL) leaves nothing at --out."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backlens.errors import BacklensError
from backlens.workflows.run_dir import check_output_file, check_run_dir, final_path, staged_run_dir


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (what 'unchanged' means)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def earlier_run(root: Path) -> Path:
    run = root / "run"
    (run / "maps").mkdir(parents=True)
    (run / "results.json").write_text("old")
    (run / "maps" / "old-map.safetensors").write_text("old map")
    return run


def a_file(root: Path, name: str = "f") -> Path:
    (root / name).write_text("x")
    return root / name


# (how to make the path under tmp_path, overwrite, what the error says)
BAD_RUN_DIRS = [
    (lambda t: a_file(t), True, "a file"),
    (lambda t: a_file(t) / "run", False, "under the file"),
    (lambda t: a_file(t) / "a" / "b", False, "under the file"),
    (lambda t: earlier_run(t), False, "holding an earlier run"),
    (lambda t: "", False, "a directory path"),
    (lambda t: 3, False, "a directory path"),
    (lambda t: a_file(t) and t, True, "holds other files"),  # overwrite replaces only a run
    (lambda t: ".", True, "outside the current one"),
]


@pytest.mark.parametrize(("make", "overwrite", "match"), BAD_RUN_DIRS)
def test_bad_run_dirs_are_refused_before_work(tmp_path: Path, make, overwrite, match) -> None:
    with pytest.raises(BacklensError, match=match), staged_run_dir(make(tmp_path), overwrite):
        raise AssertionError("the body must not run")  # pragma: no cover


@pytest.mark.parametrize("make", [lambda t: t / "new" / "deeper" / "run", lambda t: t])
def test_new_or_empty_dirs_are_accepted(tmp_path: Path, make) -> None:
    assert check_run_dir(make(tmp_path), overwrite=False) == make(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_parent_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(BacklensError, match="read-only"):
            check_run_dir(tmp_path / "run", overwrite=False)
    finally:
        tmp_path.chmod(0o700)


def test_a_complete_run_is_renamed_into_place(tmp_path: Path) -> None:
    with staged_run_dir(tmp_path / "run", overwrite=False) as stage:
        assert stage is not None and stage.parent == tmp_path and stage.name.startswith(".run.partial-")
        assert not (tmp_path / "run").exists()  # nothing at --out until the run is complete
        (stage / "results.json").write_text("new")
        assert final_path(stage / "results.json") == tmp_path / "run" / "results.json"
    assert tree(tmp_path) == {"run/results.json": b"new"}
    assert oct((tmp_path / "run").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_overwrite_replaces_the_earlier_run_whole(tmp_path: Path) -> None:
    run = earlier_run(tmp_path)
    with staged_run_dir(run, overwrite=True) as stage:
        assert tree(run) == {"results.json": b"old", "maps/old-map.safetensors": b"old map"}
        (stage / "results.json").write_text("new")
    assert tree(tmp_path) == {"run/results.json": b"new"}  # the old map is gone: never mixed


@pytest.mark.parametrize("error", [RuntimeError("mid-run"), KeyboardInterrupt()])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_failed_run_leaves_the_earlier_one_and_nothing_partial(tmp_path: Path, error, overwrite) -> None:
    run = earlier_run(tmp_path) if overwrite else tmp_path / "run"
    before = tree(tmp_path)
    with pytest.raises(type(error)), staged_run_dir(run, overwrite=overwrite) as stage:
        (stage / "results.json").write_text("half")
        raise error
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == (
        ["run"] if overwrite else []
    )


def test_no_out_stages_nothing() -> None:
    with staged_run_dir(None, overwrite=False) as stage:
        assert stage is None


@pytest.mark.parametrize(
    ("make", "overwrite", "match"),
    [
        (lambda t: a_file(t, "r.safetensors"), False, "which exists"),
        (lambda t: t, True, "a directory"),
        (lambda t: a_file(t) / "r.safetensors", True, "under the file"),
        (lambda t: "", False, "a file path"),
    ],
)
def test_bad_output_files_are_refused(tmp_path: Path, make, overwrite, match) -> None:
    with pytest.raises(BacklensError, match=match):
        check_output_file("--save", make(tmp_path), overwrite)


def test_output_file_may_be_replaced_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "r.safetensors").write_text("x")
    assert check_output_file("--save", tmp_path / "r.safetensors", True) == tmp_path / "r.safetensors"


def _demo_until_partial(out: Path) -> subprocess.Popen[bytes]:
    """`backlens demo --out out`, returned once its partial directory exists (mid-run)."""
    script = "from backlens.cli.main import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", script, "demo", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(f".{out.name}.partial-*")):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the demo never started its run directory"
        time.sleep(0.02)
    return process


@pytest.mark.parametrize(
    ("sig", "code", "partial_left"),
    [(signal.SIGINT, 130, False), pytest.param(signal.SIGKILL, -9, True, marks=pytest.mark.slow)],
)
def test_interrupted_demo_leaves_nothing_at_out(tmp_path: Path, sig, code, partial_left) -> None:
    out = tmp_path / "run"
    process = _demo_until_partial(out)
    time.sleep(0.3)  # into the demo's work
    process.send_signal(sig)
    assert process.wait(timeout=60) == code
    assert not out.exists()
    left = list(tmp_path.glob(".run.partial-*"))
    assert bool(left) == partial_left  # a kill leaves the partial directory, marked by its name
    if partial_left:  # and a rerun is not confused by it: it writes its own
        assert check_run_dir(out, overwrite=False) == out
