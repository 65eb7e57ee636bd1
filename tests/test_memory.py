"""Tests for :mod:`spurge.memory`: heap space freed by a block leaves the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from spurge.memory import return_freed_memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

base = rss_mib()
region = np.ones(20 * 2**20, np.uint8)  # a large buffer, freed: glibc raises its threshold
del region
kept = [np.ones(1000, np.uint8)]
strip = np.ones(8 * 2**20, np.uint8)  # so this one comes from the heap...
kept.append(np.ones(1000, np.uint8))  # ...with something allocated after it
del strip
if sys.argv[1] == "trim":
    assert return_freed_memory()
print(rss_mib() - base)
"""


def _retained_mib(mode: str) -> float:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* settings from the caller
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_heap_space_is_returned_to_the_system():
    assert _retained_mib("keep") >= 7  # glibc alone keeps the freed 8 MiB
    assert _retained_mib("trim") < 2
