"""Shared fixtures: tiny species configs and the real rasters in ../shared/testdata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spurge.config import SpeciesConfig
from tests.builders import tiny_config as make_tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
# Maps stamp their creation time into every product; pin it (the reproducible-builds
# convention, honoured by spurge.mapping.provenance) so runs compared byte for byte agree.
# Set in os.environ so CLI subprocesses (kill-and-resume tests) inherit it too.
os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")


def _find_testdata() -> Path:
    """Where the shared real test data lives.

    $SPURGE_TESTDATA, else ``shared/testdata`` beside the checkout or beside a folder above it
    (git worktrees live one level deeper, e.g. ``wt/<branch>``, than the main checkout).
    """
    if os.environ.get("SPURGE_TESTDATA"):
        return Path(os.environ["SPURGE_TESTDATA"])
    for folder in REPO_ROOT.parents:
        candidate = folder / "shared" / "testdata"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "testdata"


TESTDATA = _find_testdata()


def testdata_required() -> bool:
    """Whether missing shared test data is a failure: on CI (``CI=true``), where it must be."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_testdata(name: str | None = None) -> Path:
    """The shared test data folder, or the file ``name`` in it.

    Missing data fails the test under CI (issue 17 item 12: a CI run that silently skips the
    real-raster tests proves nothing) and skips it for a developer without the data.
    """
    path = TESTDATA / name if name else TESTDATA
    if not (path.is_file() if name else path.is_dir()):
        message = f"shared test data {path} is not available (set SPURGE_TESTDATA)"
        if testdata_required():
            pytest.fail(f"{message}; CI=true needs it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def testdata() -> Path:
    """The shared real georeferenced rasters and vectors (see :func:`require_testdata`)."""
    return require_testdata()


@pytest.fixture
def tiny_config() -> SpeciesConfig:
    return make_tiny_config()
