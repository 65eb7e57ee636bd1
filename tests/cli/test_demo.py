"""`spurge demo` end to end: every stage runs, the summary tells the truth about its outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner

from spurge.cli import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_demo_accuracy() -> float:
    """The held-out balanced accuracy the README quotes for `spurge demo`'s default seed."""
    found = re.search(
        r"held-out balanced accuracy \((\d\.\d+) with the default seed\)",
        " ".join(README.read_text(encoding="utf-8").split()),
    )
    assert found, "README no longer quotes the demo accuracy"
    return float(found.group(1))


def test_the_readme_quotes_the_demo_accuracy_beside_its_command() -> None:
    text = README.read_text(encoding="utf-8")
    assert 0.5 < readme_demo_accuracy() <= 1.0
    assert "spurge demo --out runs/demo" in text


@pytest.mark.slow
def test_demo_runs_every_stage_and_lists_real_outputs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = result.output

    # The miniature random diffusion model is named as such, never passed off as real.
    assert "tiny-random is a miniature random-weight" in summary
    # Every file the summary lists exists, and every stage left its artefact.
    listed = [Path(line.strip()) for line in summary.splitlines() if line.startswith("  /")]
    assert listed and all(path.is_file() for path in listed)
    for artefact in (
        "synthetic/plots.gpkg",
        "tiles/tiles.parquet",
        "augment/da-fusion/synthetic.parquet",
        "run/model.safetensors",
        "run/metrics.json",
        "evaluate/results.csv",
    ):
        assert out / artefact in listed, artefact

    # The held-out site is mapped, georeferenced like its orthomosaic.
    held_out = re.search(r"Held-out \((site_\d{3})\) balanced accuracy: ([0-9.]+)", summary)
    assert held_out, summary
    site, accuracy = held_out.group(1), float(held_out.group(2))
    prob = out / "maps" / f"{site}_prob.tif"
    assert prob in listed and (out / "maps" / f"{site}_prob.qml").is_file()
    with rasterio.open(prob) as mapped, rasterio.open(out / "synthetic" / f"{site}.tif") as src:
        assert mapped.crs == src.crs
        assert (mapped.transform.c, mapped.transform.f) == (src.transform.c, src.transform.f)
    # The held-out accuracy is exactly the figure the README quotes for the default seed
    # (the synthetic data are bit-identical across CPUs, see tests/io/test_synthetic_data.py).
    assert held_out.group(2) == f"{readme_demo_accuracy():.2f}"
    assert 0.5 < accuracy <= 1.0
    html = out / "maps" / f"{site}.html"
    assert f"Open the map: python -m webbrowser file://{html.resolve()}" in summary
