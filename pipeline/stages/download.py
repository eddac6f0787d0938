"""Stage `download`: get the four raw IDX files of the configured dataset, checked, into data/raw.

Sources are tried in order and the first that passes every check is used: `data.local_dir` when it
is set (and then nothing else), the system datasets folder (Debian's `dataset-fashion-mnist`
package installs one), then the dataset's canonical mirrors. This is the only module that touches
the network.

    python -m pipeline.stages.download --params params.yaml --system-root /usr/share/datasets \
        --out data/raw
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import config, contracts, io
from pipeline.data import datasets, idx

# Where dvc.yaml points --system-root: Debian's dataset packages install there.
SYSTEM_ROOT = Path("/usr/share/datasets")
DEFAULT_TIMEOUT = 30.0
MANIFEST = contracts.RawManifest.file_name
# Debian packages that install a known dataset under SYSTEM_ROOT/<Dataset.system_dir>/.
APT_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
_CHUNK_BYTES = 1 << 16


class DownloadError(RuntimeError):
    """No source gave a complete, valid copy of the dataset."""


class _SourceFailed(Exception):
    """One source failed for the dataset; the next one is tried."""


@dataclass(frozen=True)
class Fetched:
    """The verified, decompressed IDX bytes of each role, and the manifest that describes them."""

    files: dict[str, bytes]
    manifest: contracts.RawManifest


def resolve_dataset(data: config.DataConfig) -> datasets.Dataset:
    """The known dataset named in `data`, or a bare one for other MNIST-format data."""
    if data.dataset in datasets.DATASETS:
        return datasets.DATASETS[data.dataset]
    # Config only accepts an unknown dataset together with data.local_dir, the only source such
    # a dataset can come from, so it needs no mirrors, checksums or system folder.
    return datasets.Dataset(
        name=data.dataset,
        class_names=data.resolved_class_names,
        mirrors=(),
        archive_md5={},
        content_sha256={},
        system_dir="",
    )


def fetch(
    dataset: datasets.Dataset,
    *,
    class_names: tuple[str, ...],
    local_dir: Path | None,
    system_root: Path = SYSTEM_ROOT,
    timeout: float = DEFAULT_TIMEOUT,
) -> Fetched:
    """Get and verify the dataset's four files from the first source that works; write nothing.

    Raises DownloadError, listing every source tried and why it failed, when none works.
    """
    if not class_names:
        raise ValueError("class_names must name at least one class")
    sources = []
    if local_dir is not None:
        sources.append(contracts.Source("local_dir", str(local_dir)))
    else:
        if dataset.system_dir:
            sources.append(contracts.Source("system", str(Path(system_root) / dataset.system_dir)))
        sources += [contracts.Source("mirror", mirror) for mirror in dataset.mirrors]
    tried: list[contracts.Attempt] = []
    for source in sources:
        print(f"download: trying {source.kind} {source.location}")
        try:
            raw = _collect(source, dataset=dataset, timeout=timeout)
            files = _verify(
                raw,
                class_names=class_names,
                # A local folder may hold any MNIST-format data, so only the system copy and the
                # mirrors are held to the published content.
                content_sha256={} if source.kind == "local_dir" else dataset.content_sha256,
            )
        except _SourceFailed as error:
            print(f"download: {source.kind} {source.location} failed: {error}")
            tried.append(contracts.Attempt(source=source, error=str(error)))
            continue
        manifest = contracts.RawManifest(
            dataset=dataset.name,
            class_names=tuple(class_names),
            source=source,
            tried=tuple(tried),
            files=files,
            counts={split: files[f"{split}_labels"].shape[0] for split in ("train", "test")},
        )
        return Fetched(files={role: data for role, (_, data) in raw.items()}, manifest=manifest)
    raise DownloadError(_failure_message(dataset, tried, local_dir=local_dir))


def write(fetched: Fetched, out_dir: Path) -> list[Path]:
    """Write the four decompressed files, then manifest.json, atomically into `out_dir`.

    On failure none of our files is left behind, so `out_dir` never mixes old and new data.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / datasets.FILES[role] for role in datasets.FILES]
    manifest_path = out_dir / MANIFEST
    # Temporary files of a run that was killed outright are swept first.
    for path in [*paths, manifest_path]:
        for leftover in out_dir.glob(f".{path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    # The old manifest goes before any file changes, so a manifest only ever describes the files
    # written by the same run.
    manifest_path.unlink(missing_ok=True)
    try:
        for role, path in zip(datasets.FILES, paths, strict=True):
            io.write_bytes(path, fetched.files[role])
        fetched.manifest.write(manifest_path)
    except BaseException:
        for path in [*paths, manifest_path]:
            path.unlink(missing_ok=True)
        raise
    return [*paths, manifest_path]


def main(argv: list[str] | None = None) -> int:
    """Run the stage: read params, fetch, write; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the raw files")
    parser.add_argument(
        "--system-root",
        type=Path,
        required=True,
        help=f"folder holding system dataset packages ({SYSTEM_ROOT} on Debian)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per network operation"
    )
    args = parser.parse_args(argv)
    try:
        data = config.load(args.params).data
        fetched = fetch(
            resolve_dataset(data),
            class_names=data.resolved_class_names,
            local_dir=Path(data.local_dir) if data.local_dir is not None else None,
            system_root=args.system_root,
            timeout=args.timeout,
        )
    except (config.ConfigError, DownloadError) as error:
        print(f"download: {error}", file=sys.stderr)
        return 1
    paths = write(fetched, args.out)
    manifest = fetched.manifest
    print(f"download: {manifest.dataset} from {manifest.source.kind} {manifest.source.location}")
    for role, entry in manifest.files.items():
        print(f"  {role:<13} {entry.file:<24} shape {entry.shape}")
    counts = manifest.counts
    print(
        f"download: {counts['train']} train and {counts['test']} test examples,"
        f" {len(manifest.class_names)} classes; wrote {len(paths)} files to {args.out}"
    )
    return 0


def _collect(
    source: contracts.Source, *, dataset: datasets.Dataset, timeout: float
) -> dict[str, tuple[str, bytes]]:
    """Decompressed bytes of each role from one source, with the name to report it by."""
    if source.kind == "mirror":
        return {
            role: _download_archive(
                source.location.rstrip("/") + f"/{base}.gz",
                md5=dataset.archive_md5.get(role),
                timeout=timeout,
            )
            for role, base in datasets.FILES.items()
        }
    folder = Path(source.location)
    if not folder.is_dir():
        raise _SourceFailed(f"{folder} is not a folder")
    contents = {}
    for role, base in datasets.FILES.items():
        path = next((p for p in (folder / base, folder / f"{base}.gz") if p.is_file()), None)
        if path is None:
            raise _SourceFailed(f"neither {base} nor {base}.gz is in {folder}")
        try:
            contents[role] = (str(path), idx.read_bytes(path))
        except idx.IdxError as error:
            raise _SourceFailed(str(error)) from None
        except zlib.error as error:
            raise _SourceFailed(f"{path}: corrupt gzip data ({error})") from None
        except OSError as error:
            raise _SourceFailed(f"{path}: cannot read ({error})") from None
    return contents


def _download_archive(url: str, *, md5: str | None, timeout: float) -> tuple[str, bytes]:
    """Download one `.gz` archive into memory, check its md5 and return it decompressed."""
    chunks = []
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1],
                leave=False,
                file=sys.stderr,
            ) as progress:
                while chunk := response.read(_CHUNK_BYTES):
                    chunks.append(chunk)
                    progress.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise _SourceFailed(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _SourceFailed(f"{url}: cannot connect ({error.reason})") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise _SourceFailed(f"{url}: transfer failed ({type(error).__name__}: {error})") from None
    archive = b"".join(chunks)
    if expected is not None and len(archive) != expected:
        raise _SourceFailed(f"{url}: transfer interrupted after {len(archive)} of {expected} bytes")
    if md5 is not None:
        actual = hashlib.md5(archive).hexdigest()
        if actual != md5:
            raise _SourceFailed(
                f"{url}: md5 of the archive is {actual}, the published one is {md5}; the file"
                " is corrupt or not the published one"
            )
    if archive[:2] != idx.GZIP_MAGIC:
        raise _SourceFailed(f"{url}: not gzip data (starts with {archive[:16]!r})")
    try:
        return url, gzip.decompress(archive)
    except (OSError, EOFError, zlib.error) as error:
        raise _SourceFailed(f"{url}: corrupt gzip data ({error})") from None


def _verify(
    raw: dict[str, tuple[str, bytes]],
    *,
    class_names: tuple[str, ...],
    content_sha256: dict[str, str],
) -> dict[str, contracts.RawFile]:
    """Check IDX structure, shapes, counts, label range and known digests; describe each file."""
    arrays, described = {}, {}
    for role, (name, data) in raw.items():
        try:
            array = idx.decode(data, name=name)
        except idx.IdxError as error:
            raise _SourceFailed(str(error)) from None
        kind = role.split("_")[1]
        wanted = (None, *datasets.IMAGE_SHAPE) if kind == "images" else (None,)
        if array.dtype != np.uint8 or len(array.shape) != len(wanted):
            raise _SourceFailed(
                f"{name}: expected uint8 {kind} of shape {_shape_text(wanted)}, got"
                f" {array.dtype} of shape {array.shape}"
            )
        if array.shape[1:] != wanted[1:]:
            raise _SourceFailed(
                f"{name}: expected images of shape {_shape_text(wanted)}, got {array.shape}"
            )
        if len(array) == 0:
            raise _SourceFailed(f"{name}: holds no examples")
        digest = hashlib.sha256(data).hexdigest()
        expected = content_sha256.get(role)
        if expected is not None and digest != expected:
            raise _SourceFailed(
                f"{name}: sha256 of the decompressed content is {digest}, the published one is"
                f" {expected}; these are not the published data"
            )
        arrays[role] = array
        described[role] = contracts.RawFile(
            file=datasets.FILES[role], sha256=digest, shape=tuple(array.shape)
        )
    for split in ("train", "test"):
        (images_name, _), (labels_name, _) = raw[f"{split}_images"], raw[f"{split}_labels"]
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise _SourceFailed(
                f"{images_name} has {len(images)} images but {labels_name} has {len(labels)} labels"
            )
        highest = int(labels.max())
        if highest >= len(class_names):
            raise _SourceFailed(
                f"{labels_name}: label {highest} is out of range for {len(class_names)} classes"
                f" {list(class_names)}; the labels must be 0..{len(class_names) - 1}"
                " (set data.class_names in params.yaml to match the data)"
            )
    return described


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if size is None else str(size) for size in shape) + ")"


def _failure_message(
    dataset: datasets.Dataset, tried: list[contracts.Attempt], *, local_dir: Path | None
) -> str:
    lines = [f"could not get a valid copy of dataset {dataset.name!r} from any source."]
    lines += ["Sources tried:"] if tried else ["There was no source to try."]
    for attempt in tried:
        lines.append(f"  - {attempt.source.kind} {attempt.source.location}: {attempt.error}")
    files = ", ".join(f"{base}[.gz]" for base in datasets.FILES.values())
    if local_dir is not None:
        lines += [
            "To fix it:",
            f"  - make data.local_dir ({local_dir}) hold the four MNIST-format files ({files}),",
            "  - or remove data.local_dir from params.yaml to use the system copy or the mirrors.",
        ]
        return "\n".join(lines)
    lines.append("To fix it, do one of:")
    if dataset.name in APT_PACKAGES:
        lines.append(
            f"  - install the system copy: sudo apt-get install {APT_PACKAGES[dataset.name]}"
        )
    lines += [
        f"  - put the four files ({files}) in a folder and set data.local_dir in params.yaml,",
        "  - check the network connection and the proxy settings (HTTPS_PROXY, HTTP_PROXY) so"
        " that the mirrors can be reached.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
