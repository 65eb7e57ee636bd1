"""`spurge demo` end to end: every stage runs, the summary tells the truth about its outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner

from spurge.cli import cli


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
    # Eight plots' worth of tiles per class learn the synthetic task well above chance.
    assert accuracy >= 0.7
    html = out / "maps" / f"{site}.html"
    assert f"Open the map: python -m webbrowser file://{html.resolve()}" in summary
