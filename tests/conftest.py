"""Shared fixtures: deterministic seeds for every test, and reproducible hypothesis runs."""

import os

import pytest
import torch
from hypothesis import settings

# CI draws the same examples every run (a float32 example near its tolerance must not make main
# red at random); `BACKLENS_HYPOTHESIS=explore make test` draws fresh ones to hunt for new cases.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("BACKLENS_HYPOTHESIS", "ci"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
