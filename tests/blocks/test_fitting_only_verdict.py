"""The abstract verdict's "won on fitting data only" rule (held-out error > OVERFIT_RATIO × fitting)."""

from __future__ import annotations

from backlens.workflows.abstract_report import OVERFIT_RATIO, fits_its_data_only, verdict


def row(method: str, test: float, train: float, n=None, n_eff=None) -> dict:
    return {
        "method": method,
        "direction": "backward",
        "test_rel_error": test,
        "train_rel_error": train,
        "n": n,
        "n_eff": n_eff,
    }


def test_the_method_best_on_fitting_data_that_fails_held_out_is_named():
    rows = [row("ridge", 0.185, 0.0271, 1258, 10.8), row("mean-jacobian", 0.133, 0.143)]
    line = verdict(rows, "backward")
    assert line.startswith("backward: mean-jacobian wins on held-out data, rel. error 0.133")
    assert line.endswith(
        "; ridge won on fitting data only (0.0271 fitting vs 0.185 held-out, n_eff 11 of 1,258)"
    )


def test_no_note_when_the_fitting_best_also_wins_or_generalizes():
    assert "fitting data only" not in verdict([row("ridge", 0.1, 0.01), row("mj", 0.2, 0.2)], "backward")
    close = [row("ridge", 0.15, 0.1), row("mean-jacobian", 0.133, 0.143)]  # 1.5× < OVERFIT_RATIO
    assert "fitting data only" not in verdict(close, "backward")
    assert fits_its_data_only(row("r", OVERFIT_RATIO * 0.1 + 1e-9, 0.1))
    assert not fits_its_data_only({"test_rel_error": 0.5, "train_rel_error": None})
