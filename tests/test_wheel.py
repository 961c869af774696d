"""The wheel users install: built, checked by twine, installed into a clean virtual environment, where
``import flatsam`` and the ``flatsam`` command work from the installed copy (not this checkout)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import flatsam

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(*argv: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    pytest.importorskip("twine")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: this environment's setuptools, no download (CI's `make wheel` builds isolated)
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ".")
    run(sys.executable, "-m", "twine", "check", "--strict", *sorted(out.iterdir()))
    return out


def test_wheel_holds_the_package_and_its_metadata(dist):
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"flatsam-{flatsam.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "flatsam/py.typed" in names and "flatsam/engine.py" in names
    assert not any(n.startswith("tests/") for n in names)
    meta = zipfile.ZipFile(wheel).read(f"flatsam-{flatsam.__version__}.dist-info/METADATA").decode()
    assert "Requires-Dist: torch>=2.11" in meta  # a range: installing flatsam keeps the user's torch
    for extra in ("dev", "integrations", "docs", "release"):
        assert f"Provides-Extra: {extra}" in meta


def test_wheel_installs_and_runs_in_a_clean_venv(dist, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    (wheel,) = dist.glob("*.whl")
    # install the wheel alone into the empty environment: nothing is downloaded
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", wheel)
    # then let it see this environment's dependencies (torch 2.13.0 CPU, numpy, tqdm, matplotlib) by a
    # path file: their folder goes on sys.path after the venv's own (its .pth files are not read, so
    # this checkout's editable flatsam stays out)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "zz_flatsam_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run(python, "-c", "import flatsam; print(flatsam.__version__, flatsam.__file__)", cwd=tmp_path)
    version, path = where.split()
    assert version == flatsam.__version__ and Path(path).is_relative_to(venv)
    assert "usage: flatsam" in run(venv / "bin" / "flatsam", "--help", cwd=tmp_path)
    assert "ausam" in run(venv / "bin" / "flatsam", "methods", cwd=tmp_path)
