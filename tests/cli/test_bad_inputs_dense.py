"""Bad inputs of ``spurge map --method dense`` / ``--cell-size`` / ``--device`` (issue 12).

Same rules as :mod:`tests.cli.test_bad_inputs`: exit 1, one ``error:`` line naming the
problem, no traceback, nothing written, inputs byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spurge.synthetic import synthesize
from tests.builders import make_colour_model, make_dense_colour_model, tiny_config
from tests.cli.test_bad_inputs import (
    assert_nothing_written,
    assert_one_line_error,
    checksums,
    invoke,
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense_bad")
    ortho = synthesize(root / "synth", tiny_config(), sites=1, size_px=256, seed=1).orthos[0]
    return {
        "ortho": ortho,
        # test-colour-conv: 32 px windows, 8 features each -> one feature per 4 px = 0.2 m.
        "dense_model": make_dense_colour_model(root / "dense_model"),
        # test-colour: a global mean of a per-pixel score, not a feature map it can expose.
        "global_model": make_colour_model(root / "global_model"),
    }


CASES = [
    (
        "cell-not-whole-pixels",
        "dense_model",
        ["--method", "dense", "--cell-size", "0.43"],
        "whole number of ortho pixels",
    ),
    (
        "cell-finer-than-stride",
        "dense_model",
        ["--method", "dense", "--cell-size", "0.1"],
        "finer than the backbone",
    ),
    (
        "cell-size-zero",
        "dense_model",
        ["--method", "dense", "--cell-size", "0"],
        "--cell-size must be",
    ),
    (
        "cell-size-with-windows",
        "dense_model",
        ["--method", "windows", "--cell-size", "0.4"],
        "--cell-size is for --method dense",
    ),
    ("stride-with-dense", "dense_model", ["--method", "dense", "--stride", "8"], "--stride is"),
    ("stride-and-cell-size", "dense_model", ["--stride", "8", "--cell-size", "0.4"], "exclude"),
    ("backbone-not-dense", "global_model", ["--method", "dense"], "cannot map densely"),
]


@pytest.mark.parametrize(("case", "model", "extra", "problem"), CASES, ids=[c[0] for c in CASES])
def test_dense_bad_input(inputs, tmp_path, case, model, extra, problem):
    out = tmp_path / "out"
    before = checksums([inputs["ortho"].parent, inputs[model]])
    result = invoke(
        "map", str(inputs["ortho"]), "--model", str(inputs[model]), "--out", str(out), *extra
    )
    assert_one_line_error(result, problem)
    assert_nothing_written(out)
    assert checksums([inputs["ortho"].parent, inputs[model]]) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_gpu(inputs, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        "map",
        str(inputs["ortho"]),
        "--model",
        str(inputs["dense_model"]),
        "--out",
        str(out),
        "--method",
        "dense",
        "--device",
        "cuda",
    )
    assert_one_line_error(result, "CUDA is not available")
    assert_nothing_written(out)
