"""Measurement helpers shared by the benchmarks: quick mode, resident memory and its peak."""

from __future__ import annotations

import ctypes
import gc
import os
import sys


def quick() -> bool:
    """BACKLENS_BENCH_QUICK=1 (or --quick): smaller sizes / fewer steps."""
    return os.environ.get("BACKLENS_BENCH_QUICK", "") not in ("", "0") or "--quick" in sys.argv


def flag(name: str) -> bool:
    """An environment switch: set and not '0'."""
    return os.environ.get(name, "") not in ("", "0")


def status_kb(key: str) -> int:
    """A /proc/self/status field in kB (VmRSS, VmHWM); 0 where there is none."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def settle() -> None:
    """Free what can be freed and hand it back to the OS, so the next peak starts clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak() -> int | None:
    """Reset VmHWM to the current resident size; return that size in kB (None if unsupported)."""
    settle()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    return status_kb("VmRSS")
