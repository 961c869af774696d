"""MPII: the annotations (and, when asked, the images) from a loopback mirror, in the layout the reader
expects; fabricated archives in the real formats (a tar of JSON files, a gzipped tar of JPEGs)."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from flatsam import cli
from flatsam.data import download
from flatsam.pose import mpii_download
from flatsam.pose.mpii import load_mpii

RECORD = {
    "image": "000000001.jpg",
    "center": [50.0, 40.0],
    "scale": 0.3,
    "joints": [[40.0 + i, 30.0 + i] for i in range(16)],
    "joints_vis": [1] * 16,
}


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(download.MIRROR_ENV, "")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _serve(served: Path) -> None:
    with tarfile.open(served / mpii_download.ANNOTATIONS.filename, "w") as tar:
        for name in ("mpii_train.json", "mpii_val.json", "mpii_trainval.json"):
            _add(tar, f"annotations/{name}", json.dumps([RECORD, RECORD]).encode())
        _add(tar, "annotations/mpii_gt_val.mat", b"MATLAB 5.0 stand-in")
    jpeg = io.BytesIO()
    Image.new("RGB", (100, 80), (120, 60, 30)).save(jpeg, "JPEG")
    with tarfile.open(served / mpii_download.IMAGES.filename, "w:gz") as tar:
        _add(tar, "images/000000001.jpg", jpeg.getvalue())


def test_annotations_land_where_the_reader_looks(http_root, tmp_path) -> None:
    served, url = http_root
    _serve(served)
    root = tmp_path / "mpii"
    landed = mpii_download.download_annotations(root, mirror=url, progress=False)
    assert sorted(p.name for p in landed) == ["mpii_gt_val.mat", "mpii_train.json", "mpii_val.json"]
    assert sorted(p.name for p in root.iterdir()) == ["annot"]  # archive and staging folder gone
    with pytest.raises(FileNotFoundError, match="--images"):  # the images were not asked for
        load_mpii(root, 32)
    mpii_download.download_images(root, mirror=url, progress=False)
    data = load_mpii(root, 32)
    assert data.num_train == 2 and data.test_x.shape == (2, 3, 32, 32)
    assert sorted(p.name for p in root.iterdir()) == ["annot", "images"]


def test_cli_download_states_the_image_size_and_skips_it(http_root, tmp_path, capsys) -> None:
    served, url = http_root
    _serve(served)
    root = tmp_path / "mpii"
    assert cli.main(["download", "mpii", "--data-dir", str(root), "--data-url", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "12.9 GB" in out and "--images" in out
    assert not (root / "images").exists()
    argv = ["download", "mpii", "--images", "--data-dir", str(root), "--data-url", url, "--no-progress"]
    assert cli.main(argv) == 0
    assert "12.9 GB" in capsys.readouterr().err
    assert (root / "images" / "000000001.jpg").is_file()


def test_missing_annotations_name_the_command(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="flatsam download mpii"):
        load_mpii(tmp_path, 32)


def test_cli_mpii_without_task_pose(tmp_path, capsys) -> None:
    argv = ["train", "--dataset", "mpii", "--epochs", "1", "--run-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    assert "add --task pose" in capsys.readouterr().err
