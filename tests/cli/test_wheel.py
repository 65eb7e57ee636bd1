"""The built wheel works on its own: installed into a fresh venv, run from outside the checkout.

A non-editable install has no checkout beside it, so this catches files the package reads
from outside itself (configs, the QGIS style) or forgets to list as package data.

Speed and network: the wheel is built without build isolation when setuptools is importable
(else pip fetches setuptools), and installed with ``--no-deps``. The venv reaches the test
environment's third-party packages (torch and the rest, gigabytes) through a ``.pth`` file,
the way ``--system-site-packages`` would for a system Python; that site folder's own ``.pth``
files are not run, so the checkout's editable install stays out of sight.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import rasterio

from spurge import __version__
from spurge.classifier import ModelCard, build_classifier, save_model
from spurge.config import load_config
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ or .egg-info."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO_ROOT / "spurge", src / "spurge", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    try:
        import setuptools  # noqa: F401

        isolation = ["--no-build-isolation"]
    except ImportError:  # pip will fetch setuptools into an isolated build env
        isolation = []
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps"]
    _run(*pip, *isolation, "-w", tmp / "dist", src, cwd=tmp)
    wheels = list((tmp / "dist").glob(f"spurge-{__version__}-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=tmp).strip())  # fmt: skip
    # Third-party packages of this test run (not their .pth files: no editable spurge).
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
    (purelib / "_spurge_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python]
    _run(*pip, "install", "--no-deps", "--no-index", wheel, cwd=tmp)
    return venv


def test_wheel_installs_and_maps_from_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    venv = _fresh_venv(tmp_path, wheel)
    spurge = venv / "bin" / "spurge"
    work = tmp_path / "work"  # the user's folder: no configs/, no checkout
    work.mkdir()

    where = _run(venv / "bin" / "python", "-c", "import spurge; print(spurge.__file__)", cwd=work)
    assert Path(where.strip()).is_relative_to(venv), where
    assert "Typical run" in _run(spurge, "--help", cwd=work)
    assert "Run the whole pipeline on a synthetic orthomosaic" in _run(spurge, "demo", "--help",
                                                                      cwd=work)  # fmt: skip

    # The default config (leafy_spurge) comes out of the wheel; 2000 px fits its nine plots.
    synth = _run(spurge, "synth", "--out", "synth", "--sites", "1", "--size-px", "2000",
                 cwd=work)  # fmt: skip
    assert "Synthesised 1 site(s)" in synth
    config = load_config("leafy_spurge")
    model, spec = build_classifier("random-small", len(config.class_names), pretrained=False)
    save_model(model, ModelCard.for_classifier("random-small", spec, config), work / "run")

    _run(spurge, "map", "synth/site_000.tif", "--model", "run", "--out", "maps", "--stride",
         "250", cwd=work)  # fmt: skip
    with rasterio.open(work / "synth" / "site_000.tif") as ortho:
        expected = ortho.transform * ortho.transform.scale(250, 250)
        shape = (ortho.height // 250, ortho.width // 250)
    with rasterio.open(work / "maps" / "site_000_prob.tif") as prob:
        assert prob.transform == expected and prob.shape == shape
        values = prob.read(1)
    assert ((values <= 100) | (values == 255)).all() and (values <= 100).any()
    qml = (work / "maps" / "site_000_prob.qml").read_text()
    assert "singlebandpseudocolor" in qml and qml.count("<item ") == 11  # the shipped style
