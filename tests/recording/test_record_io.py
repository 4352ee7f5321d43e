"""A record written with save_record reads back equal with load_record."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import backlens


class TwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, k: int = 2
    ) -> tuple[torch.Tensor, None, torch.Tensor]:
        h = self.lin(a * b)
        return h[:, :3] * k, None, h[:, 3:]


def record_of(case: str) -> backlens.Trace:
    torch.manual_seed(0)
    if case == "mlp":
        model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
        with backlens.trace(model) as rec:
            model(torch.randn(5, 3)).sum().backward()
    elif case == "tuple output, shared module":
        model = TwoOut()
        a, b = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4)
        with backlens.trace(model, select=["", "lin"]) as rec:
            first, _, second = model(a, b, 3)
            again = model.lin(a)
            (first.sum() + second.square().sum() + again.sum()).backward()
    else:  # no backward
        model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
        with backlens.trace(model) as rec, torch.no_grad():
            model(torch.randn(5, 3))
    return rec


def same_value(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, tuple):
        return (
            isinstance(b, tuple)
            and len(a) == len(b)
            and all(same_value(x, y) for x, y in zip(a, b, strict=True))
        )
    return a is None and b is None


@pytest.mark.parametrize("case", ["mlp", "tuple output, shared module", "no backward"])
def test_round_trip(tmp_path: Path, case: str) -> None:
    rec = record_of(case)
    path = rec.save(tmp_path / "rec.safetensors")
    back = backlens.load_record(path)
    assert back.names == rec.names and not list(tmp_path.glob("*.part"))
    for ours, theirs in zip(rec, back, strict=True):
        assert (ours.name, ours.module_type, ours.is_linear, ours.params) == (
            theirs.name,
            theirs.module_type,
            theirs.is_linear,
            theirs.params,
        )
        assert len(ours.calls) == len(theirs.calls)
        for a, b in zip(ours.calls, theirs.calls, strict=True):
            assert a.index == b.index
            assert same_value(a.output, b.output)
            assert same_value(a.grad_inputs, b.grad_inputs) and same_value(a.grad_outputs, b.grad_outputs)
            # non-tensor arguments (the int k) are not stored: None in their place
            assert same_value(a.inputs, b.inputs) or case != "mlp"
    assert str(back) == str(rec)


def test_keys_name_module_call_and_field(tmp_path: Path) -> None:
    path = record_of("tuple output, shared module").save(tmp_path / "r.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert {
        "/0/input.0",
        "/0/input.1",
        "/0/output.0",
        "/0/output.1",
        "/0/grad_input.0",
        "/0/grad_output.1",
        "lin/0/input.0",
        "lin/1/grad_output.0",
    } <= keys


class RunsBackwards(nn.Module):
    """Registers first, second, unused, but runs second before first."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second, self.unused = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(self.second(x))


def test_names_follow_the_run_order_through_save_and_load(tmp_path: Path) -> None:
    model = RunsBackwards()
    with backlens.trace(model) as rec:
        model(torch.randn(2, 3)).sum().backward()
    assert rec.names == ["second", "first", "unused"]  # those that ran in order, then the rest
    assert backlens.load_record(rec.save(tmp_path / "r.safetensors")).names == rec.names


def test_trace_order_argument_and_mark_ran() -> None:
    rec = backlens.Trace([backlens.ModuleRecord(n, "Linear") for n in "abc"], order=["c"])
    assert rec.names == ["c", "a", "b"]
    rec.mark_ran("b")
    rec.mark_ran("c")  # a second run keeps the place of the first
    assert rec.names == ["c", "b", "a"]
    with pytest.raises(backlens.BacklensError, match="name: expected a module name of this trace"):
        rec.mark_ran("z")
    with pytest.raises(backlens.BacklensError, match="'z'"):
        backlens.Trace([backlens.ModuleRecord("a", "Linear")], order=["z"])


def test_per_sample_grads_from_a_loaded_record(tmp_path: Path) -> None:
    model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
    with backlens.trace(model, select=[nn.Linear]) as rec:
        nn.functional.mse_loss(model(torch.randn(6, 3)), torch.zeros(6, 2)).backward()
    back = backlens.load_record(rec.save(tmp_path / "r.safetensors"))
    assert torch.equal(back.per_sample_grad_norms(), rec.per_sample_grad_norms())


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(backlens.BacklensError, match="existing"):
        backlens.load_record(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(backlens.BacklensError, match="unreadable"):
        backlens.load_record(junk)
    with pytest.raises(backlens.BacklensError, match="Trace"):
        backlens.save_record({"not": "a trace"}, tmp_path / "x.safetensors")  # type: ignore[arg-type]
