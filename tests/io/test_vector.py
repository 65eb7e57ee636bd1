"""Reading field plots: formats, CRS handling and the errors an ecologist can run into."""

from __future__ import annotations

import geopandas as gpd
import pytest
from shapely.geometry import Point

from spurge.config import SpeciesConfig
from spurge.errors import VectorError
from spurge.io.vector import parse_crs, plots_in_crs, read_plots
from tests.builders import tiny_config as make_tiny_config


def test_csv_with_xy_columns(tmp_path) -> None:
    csv = tmp_path / "plots.csv"
    csv.write_text(
        "Easting,Northing,label,site\n300010.5,5179990,present,a\n300020,5179980,absent,a\n"
    )
    plots = read_plots(csv, make_tiny_config(), crs="32612")
    assert plots.crs.to_epsg() == 32612
    assert list(plots["plot_id"]) == ["plot0001", "plot0002"]
    assert list(plots["label"]) == ["present", "absent"] and list(plots["kind"]) == ["point"] * 2
    assert plots.geometry.iloc[0].equals(Point(300010.5, 5179990))
    with pytest.raises(VectorError, match="CSV carries no CRS"):
        read_plots(csv, make_tiny_config())
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,present\n")
    with pytest.raises(VectorError, match="coordinate columns"):
        read_plots(bad, make_tiny_config(), crs="EPSG:32612")
    holes = tmp_path / "holes.csv"
    holes.write_text("x,y,label\n1,2,present\n,3,absent\n")
    with pytest.raises(VectorError, match="line 3"):
        read_plots(holes, make_tiny_config(), crs="EPSG:32612")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(VectorError, match="empty"):
        read_plots(empty, make_tiny_config(), crs="EPSG:32612")


def test_labels_and_ids_are_checked(tmp_path) -> None:
    frame = gpd.GeoDataFrame(
        {"label": ["present", "maybe", "absent"], "plot_id": ["p1", "p2", "p2"]},
        geometry=[Point(0, 0), Point(10, 0), Point(20, 0)],
        crs="EPSG:32612",
    )
    path = tmp_path / "plots.gpkg"
    frame.to_file(path)
    with pytest.raises(VectorError, match=r"unknown class value\(s\) \['maybe'\]") as err:
        read_plots(path, make_tiny_config())
    assert str(path) in err.value.one_line()
    frame["label"] = ["present", "absent", "absent"]
    frame.to_file(path)
    with pytest.raises(VectorError, match="duplicate plot id"):
        read_plots(path, make_tiny_config())
    with pytest.raises(VectorError, match="no class column 'cls'"):
        read_plots(path, make_tiny_config(label_column="cls"))
    with pytest.raises(VectorError, match="declares EPSG:32612"):
        read_plots(path, make_tiny_config(plot_id_column=None), crs="EPSG:4326")
    plots = read_plots(path, make_tiny_config(plot_id_column=None))
    assert plots["site"].isna().all()  # no site column: sites come from the orthomosaics
    assert plots_in_crs(plots, "EPSG:32612") is plots
    assert plots_in_crs(plots, "EPSG:4326").crs.to_epsg() == 4326
    with pytest.raises(VectorError, match="not a CRS"):
        parse_crs("EPSG:nope")


def test_empty_and_unreadable_files(tmp_path) -> None:
    empty = gpd.GeoDataFrame({"label": []}, geometry=[], crs="EPSG:32612")
    path = tmp_path / "empty.geojson"
    empty.to_file(path)
    with pytest.raises(VectorError, match="empty"):
        read_plots(path, make_tiny_config())
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"not a geopackage")
    with pytest.raises(VectorError, match="cannot read"):
        read_plots(junk, make_tiny_config())
    with pytest.raises(VectorError, match="file not found"):
        read_plots(tmp_path / "missing.shp", make_tiny_config())
    lines = gpd.GeoDataFrame(
        {"label": ["present"]},
        geometry=gpd.GeoSeries.from_wkt(["LINESTRING (0 0, 1 1)"]),
        crs="EPSG:32612",
    )
    lines.to_file(tmp_path / "lines.gpkg")
    with pytest.raises(VectorError, match=r"points .* or polygons"):
        read_plots(tmp_path / "lines.gpkg", make_tiny_config())


def taxa_config(*taxa: str, label_column: str = "taxonID") -> SpeciesConfig:
    return make_tiny_config(
        classes=[{"name": t, "initializer": "tree"} for t in taxa],
        positive_class=taxa[0],
        label_column=label_column,
        site_column=None,
        plot_id_column=None,
    )


def test_real_vectors(testdata, tmp_path) -> None:
    # A Shapefile without .prj needs --labels-crs.
    config = taxa_config("PIST", "ACRU", "QURU", "BEPA", "QUAL")
    with pytest.raises(VectorError, match="no CRS"):
        read_plots(testdata / "sample.shp", config)
    plots = read_plots(testdata / "sample.shp", config, crs="EPSG:32618")
    assert len(plots) == 16 and plots.crs.to_epsg() == 32618
    # Unknown classes name the values found.
    with pytest.raises(VectorError, match="unknown class value"):
        read_plots(testdata / "sample.shp", taxa_config("PIST", "ACRU"), crs="EPSG:32618")
    # One-point MultiPoints become points; MultiPolygons are outlines.
    points = gpd.read_file(testdata / "test_pts.geojson")
    points["label"] = "present"
    points.to_file(tmp_path / "pts.geojson")
    plots = read_plots(tmp_path / "pts.geojson", make_tiny_config())
    assert set(plots["kind"]) == {"point"} and set(plots.geom_type) == {"Point"}
    squares = read_plots(
        testdata / "square_crop_with_plot_ids.geojson",
        make_tiny_config(
            label_column="plot_ids",
            classes=[{"name": "888", "initializer": "a"}, {"name": "889", "initializer": "b"}],
            positive_class="889",
        ),
    )
    assert set(squares["kind"]) == {"polygon"}
    wgs = read_plots(testdata / "OSBS.shp", taxa_config("QULA", "PIPA", "QUGE", "QUMA"))
    assert len(wgs) == 42 and wgs.crs.to_epsg() == 32617
