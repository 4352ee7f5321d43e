"""The blocks tests' shared fixture: one torch thread for their tiny models."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: with two intra-op threads on a loaded 2-core machine each op waits on the
    # other thread, and these files run ~70× slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
