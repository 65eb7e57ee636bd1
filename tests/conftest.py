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
    """$SPURGE_TESTDATA, else ``shared/testdata`` beside the checkout or beside a folder above
    it (git worktrees live one level deeper, e.g. ``wt/<branch>``, than the main checkout)."""
    if os.environ.get("SPURGE_TESTDATA"):
        return Path(os.environ["SPURGE_TESTDATA"])
    for folder in REPO_ROOT.parents:
        candidate = folder / "shared" / "testdata"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "testdata"


TESTDATA = _find_testdata()


@pytest.fixture
def testdata() -> Path:
    """The shared real georeferenced rasters and vectors (skip where they are absent)."""
    if not TESTDATA.is_dir():
        pytest.skip("../shared/testdata is not available")
    return TESTDATA


@pytest.fixture
def tiny_config() -> SpeciesConfig:
    return make_tiny_config()
