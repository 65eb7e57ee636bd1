"""Tests for :mod:`spurge.memory`: freed block-sized buffers leave the process at once."""

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

if sys.argv[1] == "fixed":
    assert return_freed_memory()
base = rss_mib()
region = np.ones(20 * 2**20, np.uint8)  # a block's region, freed...
del region
strip = np.ones(8 * 2**20, np.uint8)  # ...then a smaller buffer, freed too
del strip
print(rss_mib() - base)
"""


def _retained_mib(mode: str) -> float:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* from the caller
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_buffers_are_returned_to_the_system():
    # glibc alone keeps the 8 MiB buffer on its heap after the 20 MiB one raised its
    # threshold; with the threshold fixed both were their own mappings, gone when freed.
    assert _retained_mib("default") >= 7
    assert _retained_mib("fixed") < 2
