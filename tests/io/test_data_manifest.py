from __future__ import annotations

from pathlib import Path

import pytest

from spurge.config import load_config
from spurge.io.data_manifest import load_dataset_manifest, verify_dataset
from spurge.synthetic import synthesize

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifest"


def test_every_manifest_is_valid() -> None:
    paths = sorted(MANIFESTS.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"leafy_spurge_dataset", "spurge_synthetic_demo"}
    for path in paths:
        manifest = load_dataset_manifest(path)
        assert manifest.licence and manifest.source


def test_public_leafy_spurge_dataset_facts() -> None:
    manifest = load_dataset_manifest(MANIFESTS / "leafy_spurge_dataset.yaml")
    assert manifest.licence == "CC-BY-4.0"
    assert manifest.gsd_m == pytest.approx(0.0127)
    assert manifest.classes == ["absent", "present"]
    assert "mpg-ranch" in manifest.source


@pytest.mark.slow
def test_demo_synthetic_set_matches_its_manifest(tmp_path: Path) -> None:
    """Regenerating the demo's synthetic set gives the recorded bytes (determinism)."""
    synthesize(tmp_path, load_config("leafy_spurge"), sites=3, size_px=2000, seed=0)
    report = verify_dataset(MANIFESTS / "spurge_synthetic_demo.yaml", tmp_path)
    assert report.ok, report.summary()
    assert len(report.ok_files) == 7
