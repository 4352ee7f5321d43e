"""benchmarks/gpu_check.py on a machine without a GPU: it says so and exits 0 (its CUDA checks
run where a GPU is; BACKLENS_GPU_CHECK_DEVICE=cpu runs the same code CPU against CPU)."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"


def test_without_a_gpu_it_says_so_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("BACKLENS_GPU_CHECK_DEVICE", None)
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout
