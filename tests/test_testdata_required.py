"""Tests on ../shared/testdata fail under CI when the data is missing, and skip elsewhere.

Issue 17 item 12: a CI run without the data used to pass with the real-raster tests skipped.
Each case runs pytest in a subprocess with SPURGE_TESTDATA pointing at a missing folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# One test per way of reaching the data: the fixture, World.testdata in the bad-input matrix,
# a module-wide mark, and a direct call.
NEEDS_DATA = [
    "tests/io/test_raster.py::test_rasters_without_crs_are_refused",
    "tests/cli/test_bad_inputs.py::test_bad_input_is_a_one_line_error[map-no-crs-real-ortho]",
    "tests/mapping/test_map_real.py::test_real_rasters_map_without_error[rgb.tif]",
    "tests/train/test_classifier_backbones.py::"
    "test_efficientnet_lite0_on_a_known_image_is_not_uniform",
]


def _pytest_without_data(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["SPURGE_TESTDATA"] = str(tmp_path / "no-testdata-here")
    env["PYTHONPATH"] = str(REPO_ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", *NEEDS_DATA],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_missing_testdata_fails_under_ci_and_skips_for_a_developer(tmp_path: Path) -> None:
    on_ci = _pytest_without_data(tmp_path, "true")
    assert on_ci.returncode == 1, on_ci.stdout
    assert on_ci.stdout.count("CI=true needs it") >= len(NEEDS_DATA), on_ci.stdout
    assert " passed" not in on_ci.stdout and " skipped" not in on_ci.stdout, on_ci.stdout

    at_home = _pytest_without_data(tmp_path, None)
    assert at_home.returncode == 0, at_home.stdout
    assert "failed" not in at_home.stdout and " passed" not in at_home.stdout, at_home.stdout
    assert "skipped" in at_home.stdout and "is not available" in at_home.stdout
