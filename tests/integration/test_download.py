"""Stage `download`: local folder, system folder and mirrors (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import config, contracts, io
from pipeline.data import datasets, idx
from pipeline.stages import download
from tests.support import servers, synthetic

ROLES = tuple(datasets.FILES)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder, plus `/short/<file>` (cut off halfway) and `/slow/<file>` (no answer)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/short/"):
            data = (Path(self.directory) / "good" / self.path.removeprefix("/short/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        elif self.path.startswith("/slow/"):
            self.server.stop.wait(10)
        else:
            super().do_GET()


@dataclass(frozen=True)
class Mirror:
    url: str  # the server's root; "<url>good/" is a complete, valid mirror
    root: Path  # the folder it serves
    originals: dict[str, Path]  # the good `.gz` files by role


@pytest.fixture
def mirror(tmp_path: Path):
    root = tmp_path / "www"
    originals = synthetic.write_dataset(root / "good", n_train=40, n_test=20, gz=True)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *args: _Handler(*args, directory=str(root))
    )
    server.stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_address[1]}/", root, originals)
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{servers.free_port()}/"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _content_sha256(paths: dict[str, Path]) -> dict[str, str]:
    return {role: hashlib.sha256(idx.read_bytes(path)).hexdigest() for role, path in paths.items()}


def _dataset(
    *mirrors: str,
    archives: dict[str, Path],
    name: str = "synthetic",
    content_sha256: dict[str, str] | None = None,
) -> datasets.Dataset:
    """A dataset whose published md5s (and content sha256s) are those of `archives`."""
    return datasets.Dataset(
        name=name,
        class_names=synthetic.CLASS_NAMES,
        mirrors=mirrors,
        archive_md5={role: _md5(path) for role, path in archives.items()},
        content_sha256=_content_sha256(archives) if content_sha256 is None else content_sha256,
        system_dir="synthetic",
    )


def _fetch(dataset: datasets.Dataset, tmp_path: Path, **overrides) -> download.Fetched:
    options = {
        "class_names": synthetic.CLASS_NAMES,
        "local_dir": None,
        "system_root": tmp_path / "no-system-root",
        "timeout": 5.0,
    }
    return download.fetch(dataset, **{**options, **overrides})


def _copy_good(mirror: Mirror, name: str) -> Path:
    return Path(shutil.copytree(mirror.root / "good", mirror.root / name))


def _listing(folder: Path) -> list[str]:
    """Every entry of `folder`, hidden ones included; [] when it does not exist."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def _write_params(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_mirror_download_writes_verified_files_and_manifest(mirror: Mirror, tmp_path: Path):
    dataset = _dataset(mirror.url + "good/", archives=mirror.originals)
    fetched = _fetch(dataset, tmp_path)
    out = tmp_path / "raw"
    written = download.write(fetched, out)

    assert _listing(out) == sorted([*datasets.FILES.values(), download.MANIFEST])
    assert written == [out / base for base in datasets.FILES.values()] + [out / "manifest.json"]
    expected_sha256 = _content_sha256(mirror.originals)
    for role, base in datasets.FILES.items():
        content = (out / base).read_bytes()
        assert content[:2] != idx.GZIP_MAGIC, "outputs are decompressed"
        assert hashlib.sha256(content).hexdigest() == expected_sha256[role]
        np.testing.assert_array_equal(idx.read(out / base), idx.read(mirror.originals[role]))

    manifest = contracts.RawManifest.read(out / "manifest.json")
    assert manifest == fetched.manifest
    assert manifest.dataset == "synthetic"
    assert manifest.class_names == synthetic.CLASS_NAMES
    assert manifest.source == contracts.Source("mirror", mirror.url + "good/")
    # The system folder comes first and is absent here, so it is recorded as tried.
    [system] = manifest.tried
    assert system.source.kind == "system"
    assert "is not a folder" in system.error
    assert manifest.counts == {"train": 40, "test": 20}
    assert manifest.files["train_images"] == contracts.RawFile(
        file="train-images-idx3-ubyte", sha256=expected_sha256["train_images"], shape=(40, 28, 28)
    )
    assert manifest.files["test_labels"].shape == (20,)


def _replace_labels(folder: Path) -> None:
    labels = idx.read(folder / "train-labels-idx1-ubyte.gz")
    idx.write(folder / "train-labels-idx1-ubyte.gz", (labels + 1) % 10)


def _truncate_labels(folder: Path) -> None:
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])


@pytest.mark.parametrize(
    ("damage", "publish_damaged", "base", "message"),
    [
        pytest.param(_replace_labels, False, "", "md5 of the archive is", id="md5-mismatch"),
        # The published md5 is that of the damaged file, so the gzip check itself must catch it.
        pytest.param(_truncate_labels, True, "", "corrupt gzip data", id="truncated-gzip"),
        # A valid archive whose md5 matches, but whose content is not the published data.
        pytest.param(_replace_labels, True, "", "sha256 of the decompressed", id="sha256-mismatch"),
        pytest.param(None, False, "short/", "transfer interrupted", id="interrupted-transfer"),
    ],
)
def test_corrupt_mirror_file_fails_naming_it_and_writes_nothing(
    mirror: Mirror, tmp_path: Path, monkeypatch, damage, publish_damaged, base, message
):
    served = _copy_good(mirror, "bad")
    if damage is not None:
        damage(served)
    archives = {role: served / mirror.originals[role].name for role in ROLES}
    dataset = _dataset(
        mirror.url + (base or "bad/"),
        archives=archives if publish_damaged else mirror.originals,
        content_sha256=_content_sha256(mirror.originals),
    )
    with pytest.raises(download.DownloadError, match=message) as caught:
        _fetch(dataset, tmp_path)
    # An interrupted transfer fails on the first file, damage on the labels file.
    named = "train-images-idx3-ubyte.gz" if base else "train-labels-idx1-ubyte.gz"
    assert named in str(caught.value)
    assert mirror.url in str(caught.value)

    # Through the stage's command line, too: it fails and leaves nothing behind.
    monkeypatch.setitem(datasets.DATASETS, "synthetic", dataset)
    out = tmp_path / "raw"
    params = _write_params(tmp_path, {"dataset": "synthetic"})
    argv = ["--params", str(params), "--out", str(out), "--system-root", str(tmp_path / "none")]
    assert download.main(argv) == 1
    assert _listing(out) == []


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        pytest.param(lambda mirror: _closed_port_url(), "cannot connect", id="closed-port"),
        pytest.param(lambda mirror: mirror.url + "missing/", "HTTP 404", id="404"),
        pytest.param(lambda mirror: mirror.url + "slow/", "timed out", id="timeout"),
    ],
)
def test_second_mirror_is_used_when_the_first_fails(mirror: Mirror, tmp_path: Path, first, reason):
    first_url = first(mirror)
    dataset = _dataset(first_url, mirror.url + "good/", archives=mirror.originals)
    fetched = _fetch(dataset, tmp_path, timeout=0.5)
    manifest = fetched.manifest
    assert manifest.source == contracts.Source("mirror", mirror.url + "good/")
    assert [attempt.source.kind for attempt in manifest.tried] == ["system", "mirror"]
    assert manifest.tried[1].source.location == first_url
    assert reason in manifest.tried[1].error
    assert "train-images-idx3-ubyte.gz" in manifest.tried[1].error


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_local_dir_is_the_only_source_when_set(mirror: Mirror, tmp_path: Path, gz: bool):
    local = tmp_path / "kmnist"
    paths = synthetic.write_dataset(local, n_train=30, n_test=10, gz=gz, seed=7)
    data = config.DataConfig(
        dataset="kmnist", local_dir=str(local), class_names=synthetic.CLASS_NAMES
    )
    fetched = download.fetch(
        download.resolve_dataset(data),
        class_names=data.resolved_class_names,
        local_dir=local,
        system_root=tmp_path / "no-system-root",
        timeout=1.0,
    )
    assert fetched.manifest.source == contracts.Source("local_dir", str(local))
    assert fetched.manifest.tried == ()
    assert fetched.manifest.counts == {"train": 30, "test": 10}
    for role, path in paths.items():
        assert fetched.files[role] == idx.read_bytes(path)


def test_local_dir_accepts_mixed_plain_and_gz_files(tmp_path: Path):
    local = tmp_path / "mixed"
    paths = synthetic.write_dataset(local, n_train=12, n_test=10, gz=True)
    plain = local / datasets.FILES["test_images"]
    plain.write_bytes(idx.read_bytes(paths["test_images"]))
    paths["test_images"].unlink()
    dataset = _dataset(archives=synthetic.write_dataset(tmp_path / "other", seed=5))
    fetched = _fetch(dataset, tmp_path, local_dir=local)
    # A local folder may hold any MNIST-format data, so the published digests do not apply.
    assert fetched.manifest.source.kind == "local_dir"
    assert fetched.files["test_images"] == plain.read_bytes()


def test_failing_local_dir_does_not_fall_back(mirror: Mirror, tmp_path: Path):
    local = tmp_path / "incomplete"
    synthetic.write_dataset(local, gz=False)
    (local / datasets.FILES["test_labels"]).unlink()
    dataset = _dataset(mirror.url + "good/", archives=mirror.originals, name="fashion_mnist")
    with pytest.raises(download.DownloadError) as caught:
        _fetch(dataset, tmp_path, local_dir=local)
    message = str(caught.value)
    assert f"local_dir {local}: neither t10k-labels-idx1-ubyte nor" in message
    assert f"mirror {mirror.url}" not in message and "apt-get" not in message
    assert "remove data.local_dir" in message


def test_system_folder_is_used_before_the_mirrors(tmp_path: Path):
    system_root = tmp_path / "datasets"
    # Debian re-compresses the archives, so only the content digest is checked for this source.
    files = synthetic.write_dataset(system_root / "synthetic", n_train=20, n_test=10)
    for path in files.values():
        path.write_bytes(gzip.compress(idx.read_bytes(path), compresslevel=1, mtime=1))
    published = synthetic.write_dataset(tmp_path / "published", n_train=20, n_test=10)
    dataset = _dataset(_closed_port_url(), archives=published)
    assert dataset.archive_md5 != {role: _md5(path) for role, path in files.items()}

    fetched = _fetch(dataset, tmp_path, system_root=system_root)
    assert fetched.manifest.source == contracts.Source("system", str(system_root / "synthetic"))
    assert fetched.manifest.tried == ()
    assert fetched.manifest.counts == {"train": 20, "test": 10}


def test_system_folder_with_other_content_falls_back_to_a_mirror(mirror: Mirror, tmp_path: Path):
    system_root = tmp_path / "datasets"
    synthetic.write_dataset(system_root / "synthetic", seed=3)
    dataset = _dataset(mirror.url + "good/", archives=mirror.originals)
    manifest = _fetch(dataset, tmp_path, system_root=system_root).manifest
    assert manifest.source.kind == "mirror"
    [system] = manifest.tried
    assert system.source == contracts.Source("system", str(system_root / "synthetic"))
    assert "train-images-idx3-ubyte.gz: sha256 of the decompressed content" in system.error


def test_every_source_failing_lists_each_and_says_how_to_fix_it(mirror: Mirror, tmp_path: Path):
    closed = _closed_port_url()
    dataset = _dataset(closed, mirror.url + "missing/", archives=mirror.originals)
    dataset = dataclasses.replace(dataset, name="fashion_mnist")
    with pytest.raises(download.DownloadError) as caught:
        _fetch(dataset, tmp_path)
    assert isinstance(caught.value, RuntimeError)
    message = str(caught.value)
    assert "'fashion_mnist'" in message
    assert f"system {tmp_path / 'no-system-root' / 'synthetic'}: " in message
    assert f"mirror {closed}: " in message and "cannot connect" in message
    assert f"mirror {mirror.url}missing/: " in message and "HTTP 404" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "data.local_dir" in message
    assert "proxy" in message


def _bad_labels(folder: Path) -> None:
    labels = idx.read(folder / "train-labels-idx1-ubyte.gz")
    idx.write(folder / "train-labels-idx1-ubyte.gz", labels[:-1])


def _bad_images(folder: Path) -> None:
    idx.write(folder / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32), dtype=np.uint8))


def _int_labels(folder: Path) -> None:
    labels = idx.read(folder / "t10k-labels-idx1-ubyte.gz")
    idx.write(folder / "t10k-labels-idx1-ubyte.gz", labels.astype(np.int32))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            _bad_labels,
            "train-images-idx3-ubyte.gz has 40 images but .*train-labels-idx1-ubyte.gz has 39",
        ),
        (_bad_images, r"t10k-images-idx3-ubyte.gz: expected images of shape \(N, 28, 28\)"),
        (
            _int_labels,
            r"t10k-labels-idx1-ubyte.gz: expected uint8 labels of shape \(N\), got int32",
        ),
    ],
    ids=["counts", "image-shape", "label-dtype"],
)
def test_structure_errors_name_the_file(mirror: Mirror, tmp_path: Path, damage, message):
    local = _copy_good(mirror, "local")
    damage(local)
    with pytest.raises(download.DownloadError, match=message):
        _fetch(_dataset(archives=mirror.originals), tmp_path, local_dir=local)


def test_labels_out_of_range_for_the_class_names(mirror: Mirror, tmp_path: Path):
    dataset = _dataset(archives=mirror.originals)
    with pytest.raises(download.DownloadError, match="label 9 is out of range for 5 classes"):
        _fetch(
            dataset, tmp_path, local_dir=mirror.root / "good", class_names=("a", "b", "c", "d", "e")
        )


def test_main_end_to_end_from_a_mirror(mirror: Mirror, tmp_path: Path, monkeypatch, capsys):
    dataset = _dataset(mirror.url + "good/", archives=mirror.originals)
    monkeypatch.setitem(datasets.DATASETS, "synthetic", dataset)
    params = _write_params(tmp_path, {"dataset": "synthetic"})
    out = tmp_path / "data" / "raw"
    argv = ["--params", str(params), "--out", str(out), "--system-root", str(tmp_path)]
    assert download.main(argv) == 0

    stdout = capsys.readouterr().out
    assert f"from mirror {mirror.url}good/" in stdout
    assert "shape (40, 28, 28)" in stdout
    assert str(out) in stdout
    manifest = contracts.RawManifest.read(out / "manifest.json")
    assert manifest.source.kind == "mirror"
    assert manifest.counts == {"train": 40, "test": 20}
    for entry in manifest.files.values():
        assert hashlib.sha256((out / entry.file).read_bytes()).hexdigest() == entry.sha256


def test_main_with_an_unknown_dataset_from_local_dir(tmp_path: Path, capsys):
    local = tmp_path / "kmnist"
    synthetic.write_dataset(local, n_train=15, n_test=10, gz=False)
    class_names = [f"kana_{index}" for index in range(10)]
    params = _write_params(
        tmp_path, {"dataset": "kmnist", "local_dir": str(local), "class_names": class_names}
    )
    out = tmp_path / "raw"
    argv = ["--params", str(params), "--out", str(out), "--system-root", str(tmp_path)]
    assert download.main(argv) == 0
    manifest = contracts.RawManifest.read(out / "manifest.json")
    assert manifest.dataset == "kmnist"
    assert manifest.class_names == tuple(class_names)
    assert manifest.source == contracts.Source("local_dir", str(local))


def test_main_reports_failure_on_stderr(tmp_path: Path, capsys):
    params = _write_params(
        tmp_path,
        {"dataset": "kmnist", "local_dir": str(tmp_path / "nowhere"), "class_names": ["a"]},
    )
    argv = ["--params", str(params), "--out", str(tmp_path / "raw"), "--system-root", "/nowhere"]
    assert download.main(argv) == 1
    stderr = capsys.readouterr().err
    assert f"local_dir {tmp_path / 'nowhere'}: " in stderr
    assert "is not a folder" in stderr
    assert not (tmp_path / "raw").exists()


def _fetched(tmp_path: Path, seed: int = 0) -> download.Fetched:
    local = tmp_path / f"local-{seed}"
    synthetic.write_dataset(local, n_train=10, n_test=10, seed=seed)
    return _fetch(_dataset(archives={}, content_sha256={}), tmp_path, local_dir=local)


def test_write_replaces_old_outputs_and_sweeps_leftover_temporaries(tmp_path: Path):
    out = tmp_path / "raw"
    download.write(_fetched(tmp_path, seed=1), out)
    (out / ".train-images-idx3-ubyte.abc123.tmp").write_bytes(b"partial")
    (out / "unrelated.txt").write_text("not ours")
    fetched = _fetched(tmp_path, seed=2)
    download.write(fetched, out)
    assert _listing(out) == sorted([*datasets.FILES.values(), "manifest.json", "unrelated.txt"])
    for role, base in datasets.FILES.items():
        assert (out / base).read_bytes() == fetched.files[role]


def test_interrupted_write_leaves_none_of_our_files(tmp_path: Path, monkeypatch):
    out = tmp_path / "raw"
    download.write(_fetched(tmp_path, seed=1), out)
    (out / "unrelated.txt").write_text("not ours")
    real_replace = os.replace
    calls = []

    def failing_replace(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        download.write(_fetched(tmp_path, seed=2), out)
    assert _listing(out) == ["unrelated.txt"]


@pytest.mark.slow
def test_real_fashion_mnist_from_the_system_folder(tmp_path: Path):
    system_root = download.SYSTEM_ROOT
    if not (system_root / "fashion-mnist").is_dir():
        pytest.skip(
            f"{system_root / 'fashion-mnist'} is absent (apt-get install dataset-fashion-mnist)"
        )
    dataset = datasets.get("fashion_mnist")
    fetched = download.fetch(
        dataset, class_names=dataset.class_names, local_dir=None, system_root=system_root
    )
    manifest = fetched.manifest
    assert manifest.source.kind == "system"
    assert manifest.counts == {"train": 60000, "test": 10000}
    out = tmp_path / "raw"
    download.write(fetched, out)
    for role, base in datasets.FILES.items():
        digest = hashlib.sha256((out / base).read_bytes()).hexdigest()
        assert digest == dataset.content_sha256[role] == manifest.files[role].sha256
