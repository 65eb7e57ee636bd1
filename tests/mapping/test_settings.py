"""``MapSettings``: validation naming the CLI flag, and the fingerprint that decides bytes."""

from __future__ import annotations

import dataclasses

import pytest

from spurge.errors import SpurgeError
from spurge.mapping import WRITERS, MapSettings


@pytest.mark.parametrize(
    "values, flag",
    [
        ({"threshold": 1.0}, "--threshold"),
        ({"threshold": 0.0}, "--threshold"),
        ({"stride": 0}, "--stride"),
        ({"blend": "max"}, "--blend"),
        ({"gsd_policy": "ignore"}, "--gsd"),
        ({"batch_size": 0}, "--batch-size"),
        ({"survey_points": -1}, "--survey-points"),
        ({"dask_workers": 2, "scheduler": "tcp://h:8786"}, "--dask-workers or --scheduler"),
        ({"dask_workers": 0}, "--dask-workers"),
        ({"scheduler": "notaurl"}, "--scheduler 'notaurl'"),
        ({"scheduler": "tcp://host"}, "--scheduler"),
        ({"outputs": ("cog", "tif")}, "--outputs: 'tif'"),
    ],
)
def test_bad_values_name_the_flag(values, flag):
    with pytest.raises(SpurgeError, match=flag.replace("(", r"\(")):
        MapSettings(**values)


@pytest.mark.parametrize(
    "address", ["tcp://10.0.0.5:8786", "gis-01:8786", "tls://[::1]:8786", "inproc://10.1.2.3/77/1"]
)
def test_scheduler_addresses_dask_accepts(address):
    assert MapSettings(scheduler=address).scheduler == address


def test_frozen_outputs_in_registry_order_and_fingerprint():
    settings = MapSettings(outputs="html, cog")
    assert settings.outputs == ("html", "cog") and settings.writer_names == ("cog", "html")
    assert MapSettings().writer_names == tuple(WRITERS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.threshold = 0.9  # type: ignore[misc]
    # Where and how visibly blocks run changes no byte; what is computed and written does.
    same = [{"dask_workers": 3}, {"processes": False}, {"progress": True}, {"gsd_policy": "refuse"}]
    for values in same:
        assert MapSettings(**values).fingerprint() == MapSettings().fingerprint()
    different = [{"stride": 8}, {"threshold": 0.6}, {"blend": "gaussian"}, {"outputs": ("cog",)}]
    for values in different:
        assert MapSettings(**values).fingerprint() != MapSettings().fingerprint()
