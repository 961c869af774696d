"""CIFAR-10/100 and Tiny-ImageNet downloads from a loopback mirror, with fabricated archives in the real
formats: the official MD5 refuses them, a test digest lets them land; nothing half-written stays."""

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from flatsam import cli
from flatsam.data import (
    ChecksumError,
    DownloadError,
    download,
    load_cifar10,
    load_cifar100,
    load_tiny_imagenet,
)
from flatsam.data import cifar as cifar_module
from flatsam.data import tiny_imagenet as tiny_module
from flatsam.data.cifar import CIFAR10, CIFAR100
from flatsam.data.download import Remote, extract_archive, source_url
from flatsam.data.registry import canonical_name

from .conftest import cifar_files, write_cifar_tar
from .test_tiny_imagenet import make_tree


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(download.MIRROR_ENV, "")  # restored after the test, even if the CLI sets it


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".part" in p.name)


def _serve_cifar(served: Path, spec) -> tuple[Path, dict]:
    files, expected = cifar_files(spec)
    return write_cifar_tar(served / spec.archive, spec, files), expected


def _trust(monkeypatch: pytest.MonkeyPatch, key: str, archive: Path) -> None:
    """Let the fabricated ``archive`` pass as the official file ``key``."""
    official = cifar_module.REMOTES[key]
    monkeypatch.setitem(
        cifar_module.REMOTES, key, Remote(official.url, md5=_md5(archive), size=official.size)
    )


@pytest.mark.parametrize(("spec", "loader"), [(CIFAR10, load_cifar10), (CIFAR100, load_cifar100)])
def test_cifar_download_from_a_mirror(http_root, tmp_path, monkeypatch, spec, loader) -> None:
    served, url = http_root
    archive, expected = _serve_cifar(served, spec)
    _trust(monkeypatch, spec.name, archive)
    target = tmp_path / "data"
    data = loader(target, download=True, mirror=url, progress=False)
    assert (target / spec.archive).read_bytes() == archive.read_bytes()
    assert data.train_y.tolist() == expected["train_y"].tolist()
    assert data.test_x.numpy().tobytes() == expected["test_x"].tobytes()
    assert _leftovers(target) == []


def test_official_md5_refuses_a_fabricated_tarball(http_root, tmp_path) -> None:
    served, url = http_root
    archive, _ = _serve_cifar(served, CIFAR10)
    target = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        load_cifar10(target, download=True, mirror=url, progress=False)
    message = str(info.value)
    assert (
        "MD5 mismatch" in message
        and "c58f30108f718f92721af3b95e74349a" in message
        and _md5(archive) in message
    )
    assert url + CIFAR10.archive in message
    assert list(target.iterdir()) == []  # neither the tarball nor a .part file


def test_no_download_without_permission(http_root, tmp_path) -> None:
    served, url = http_root
    _serve_cifar(served, CIFAR10)
    with pytest.raises(FileNotFoundError, match="--download"):
        load_cifar10(tmp_path / "data", download=False, mirror=url)


def test_network_failure_is_one_clear_error(tmp_path) -> None:
    dead = "http://127.0.0.1:9/"  # the discard port: nothing listens
    with pytest.raises(DownloadError) as info:
        load_cifar100(tmp_path, download=True, mirror=dead, progress=False)
    message = str(info.value)
    assert dead + CIFAR100.archive in message and "FLATSAM_MIRROR" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_leaves_nothing_half_written(http_root, tmp_path, monkeypatch) -> None:
    served, url = http_root
    _serve_cifar(served, CIFAR10)

    class Interrupting:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def update(self, n: int) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "tqdm", Interrupting)
    target = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        load_cifar10(target, download=True, mirror=url, progress=False)
    assert list(target.iterdir()) == []


def test_mirror_from_the_environment_and_a_plain_folder(tmp_path, monkeypatch) -> None:
    official = "https://example.org/a/b/cifar-10-python.tar.gz"
    assert source_url(official) == official
    monkeypatch.setenv(download.MIRROR_ENV, "http://mirror.local/data/")
    assert source_url(official) == "http://mirror.local/data/cifar-10-python.tar.gz"
    assert source_url(official, tmp_path) == (tmp_path / "cifar-10-python.tar.gz").resolve().as_uri()


def test_cli_train_downloads_from_a_loopback_mirror(http_root, tmp_path, monkeypatch, capsys) -> None:
    served, url = http_root
    archive, _ = _serve_cifar(served, CIFAR10)
    _trust(monkeypatch, "cifar10", archive)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    argv = ["train", "--dataset", "cifar10", "--download", "--data-url", url, "--data-dir", str(data_dir)]
    argv += ["--model", "cnn", "--epochs", "1", "--batch-size", "8", "--method", "sgd", "--no-progress"]
    argv += ["--run-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    assert (data_dir / CIFAR10.archive).is_file() and (tmp_path / "run" / "result.json").is_file()
    assert "test accuracy" in capsys.readouterr().out


def test_cli_refuses_the_fabricated_tarball_in_one_line(http_root, tmp_path, capsys) -> None:
    served, url = http_root
    _serve_cifar(served, CIFAR10)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    argv = ["train", "--dataset", "cifar10", "--data-url", url, "--data-dir", str(data_dir), "--no-progress"]
    assert cli.main([*argv, "--epochs", "1", "--run-dir", str(tmp_path / "run")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("flatsam: error:") and "MD5 mismatch" in errors[0]
    assert list(data_dir.iterdir()) == []


def test_cli_download_command(http_root, tmp_path, monkeypatch, capsys) -> None:
    served, url = http_root
    archive, _ = _serve_cifar(served, CIFAR100)
    _trust(monkeypatch, "cifar100", archive)
    argv = ["download", "cifar100", "--data-dir", str(tmp_path), "--no-progress"]
    assert cli.main([*argv, "--data-url", url]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / CIFAR100.archive)
    (served / CIFAR100.archive).unlink()
    assert cli.main(argv) == 0  # found where it landed: no second download
    assert capsys.readouterr().out.strip() == str(tmp_path / CIFAR100.archive)


def test_mpii_without_the_pose_task_says_so() -> None:
    with pytest.raises(ValueError, match="add --task pose"):
        canonical_name("mpii")


# --- Tiny-ImageNet ------------------------------------------------------------------------------------


def _tiny_zip(served: Path, tmp_path: Path) -> Path:
    folder = make_tree(tmp_path / "tree")
    archive = served / tiny_module.REMOTE.filename
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def test_tiny_imagenet_download_and_unpack(http_root, tmp_path, monkeypatch) -> None:
    served, url = http_root
    archive = _tiny_zip(served, tmp_path)
    remote = tiny_module.REMOTE
    monkeypatch.setattr(tiny_module, "REMOTE", Remote(remote.url, md5=_md5(archive), size=remote.size))
    target = tmp_path / "data"
    data = load_tiny_imagenet(target, download=True, mirror=url, progress=False, cache=False)
    assert (
        data.num_classes == 3
        and data.train_x.shape == (6, 3, 64, 64)
        and data.test_y.tolist() == [1, 2, 0, 1]
    )
    assert (target / "tiny-imagenet-200" / "wnids.txt").is_file() and (target / remote.filename).is_file()
    assert _leftovers(target) == []


def test_tiny_imagenet_official_md5_refuses_a_fabricated_zip(http_root, tmp_path) -> None:
    served, url = http_root
    _tiny_zip(served, tmp_path)
    target = tmp_path / "data"
    with pytest.raises(ChecksumError, match="90528d7ca1a48142e341f4ef8d21d0de"):
        load_tiny_imagenet(target, download=True, mirror=url, progress=False, cache=False)
    assert list(target.iterdir()) == []


def test_tiny_imagenet_zip_already_present_is_unpacked_offline(http_root, tmp_path) -> None:
    served, _ = http_root
    archive = _tiny_zip(served, tmp_path)
    target = tmp_path / "data"
    target.mkdir()
    (target / archive.name).write_bytes(archive.read_bytes())
    data = load_tiny_imagenet(target, progress=False, cache=False)  # no download allowed, none needed
    assert data.num_train == 6


def test_unpacking_refuses_members_outside_the_folder_and_leaves_nothing(tmp_path) -> None:
    archive = tmp_path / "evil.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
        zf.writestr("../escaped.txt", "x")
    archive.write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="outside the folder"):
        extract_archive(archive, out, progress=False)
    assert list(out.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
