"""Bring the registry's champion into the BentoML model store, keeping its provenance.

`python -m serving.tools.package` resolves `models:/<name>@champion` in MLflow, copies the version's
ONNX files (the float32 export and its int8 version, which `evaluate` registered) into the BentoML
store as `<name>:v<version>` with the registry version, run id, class names, input contract, metrics
and the served file as metadata, and prints the tag. A version registered before the export existed
has only its Keras model: it is exported here, checked as `evaluate` checks it, and the log says so.
Re-running it for the same version reuses the stored model.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.champion import registry

log = logging.getLogger(__name__)
# The alias `make serve` packages; `--alias challenger` packages the one waiting behind it.
ALIAS = registry.CHAMPION
# Images an export made here is checked on when there is no validation split to check it on.
CHECK_IMAGES = 1000


class PackageError(RuntimeError):
    """The champion cannot be found or brought into the BentoML store."""


def default_registered_model(params: Path = Path("params.yaml")) -> str:
    """`REGISTERED_MODEL` when set, else the name params.yaml gives the registered model."""
    if os.environ.get("REGISTERED_MODEL"):
        return os.environ["REGISTERED_MODEL"]
    from pipeline import config

    return config.load(params).registered_model


def champion_metadata(version, *, registered_model: str, tracking_uri: str) -> dict[str, Any]:
    """What serving needs to know about a registered version, from the tags evaluate set."""
    from pipeline.data import datasets

    tags = registry.VersionTags.from_tags(version.tags)
    dataset = tags.dataset or ""
    metadata = {
        "registered_model": registered_model,
        "version": str(version.version),
        "run_id": version.run_id,
        "variant": tags.variant,
        "dataset": dataset,
        "class_names": list(tags.class_names or ()),
        "input_contract": tags.input_contract,
        "content_size": tags.content_size or datasets.content_size(dataset),
        "metrics": tags.metrics,
        "git_commit": tags.git_commit,
        "data_sha256": tags.data_sha256,
        "model_uri": registry.version_uri(registered_model, version.version),
        "tracking_uri": tracking_uri,
    }
    # BentoML only stores plain values; a hand-registered version may lack some tags.
    return {key: value for key, value in metadata.items() if value is not None}


def tag_of(registered_model: str, version: Any) -> str:
    """The BentoML tag a registered version is stored under."""
    return f"{registered_model}:v{version.version}"


def stored_model(tag: str, *, run_id: str) -> str | None:
    """The tag of the BentoML model stored as `tag` from run `run_id`, or None when there is none.

    The tag holds only the version number; a store filled from another registry (or a recreated
    one) can hold a different model under the same tag, which is deleted so it can be replaced,
    as is one packaged before the service ran ONNX files.
    """
    import bentoml

    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None
    if stored.info.metadata.get("run_id") == run_id and "onnx" in stored.info.metadata:
        log.info("%s already in the BentoML store (%s)", tag, stored.path)
        return str(stored.tag)
    if stored.info.metadata.get("run_id") == run_id:
        log.info("%s in the BentoML store holds no ONNX file (packaged before): replacing it", tag)
    else:
        log.info("%s in the BentoML store came from another run: replacing it", tag)
    bentoml.models.delete(tag)
    return None


def import_version(
    client: Any,
    version: Any,
    *,
    tag: str,
    alias: str,
    metadata: dict[str, Any],
    check_images: np.ndarray,
) -> None:
    """Copy the version's ONNX files into the BentoML store as `tag`, with `metadata` and what
    the files are (`metadata["onnx"]`, which `serving.model` reads). A version registered
    before evaluate exported ONNX has none: its Keras model is exported here and checked on
    `check_images` as evaluate checks it."""
    import bentoml
    import mlflow

    from pipeline.model import onnx_export

    with tempfile.TemporaryDirectory() as scratch:
        # Ask the client where the version's files are rather than setting the process-wide
        # tracking URI (which MLflow also copies into MLFLOW_TRACKING_URI for every later caller).
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(version.name, version.version),
                dst_path=scratch,
                tracking_uri=client.tracking_uri,
            )
        )
        files = {path.name: path for path in local.rglob("*.onnx")}
        if files:
            # The served file's probe comes along (serving.follow checks candidates with it).
            files |= {path.name: path for path in local.rglob(onnx_export.PROBE_FILE)}
            onnx = registered_onnx(tag, files, version.tags)
        else:
            files, onnx = exported_onnx(tag, local, Path(scratch) / "exported", check_images)
        with bentoml.models.create(
            tag,
            module="serving.service",
            labels={"alias": alias, "dataset": metadata["dataset"], "variant": metadata["variant"]},
            metadata=metadata | {"onnx": onnx},
        ) as model:
            for name in onnx["files"]:
                shutil.copyfile(files[name], model.path_of(name))


def registered_onnx(tag: str, files: dict[str, Path], tags: dict[str, str]) -> dict[str, Any]:
    """What the version's ONNX files are, from its tags; PackageError when a file's sha256 is
    not the one its tag records."""
    from pipeline.model import onnx_export

    expected = {
        onnx_export.FP32_FILE: tags.get("onnx_fp32_sha256"),
        onnx_export.INT8_FILE: tags.get("onnx_int8_sha256"),
        onnx_export.PROBE_FILE: tags.get("onnx_probe_sha256"),
    }
    for name, path in files.items():
        if expected.get(name) and onnx_export.sha256(path) != expected[name]:
            raise PackageError(
                f"{tag}: {name} in the registry has sha256 {onnx_export.sha256(path)}, but the"
                f" version's tag says {expected[name]}; re-run `dvc repro` to register it again"
            )
    served = tags.get("onnx_file", onnx_export.FP32_FILE)
    if served not in files:
        raise PackageError(f"{tag}: the version serves {served}, which it does not hold")
    log.info("%s serves %s (%s)", tag, served, tags.get("onnx_int8_decision", "no int8 rule"))
    onnx = {
        "served_file": served,
        "precision": "int8" if served == onnx_export.INT8_FILE else "fp32",
        "sha256": onnx_export.sha256(files[served]),
        "files": sorted(files),
        "int8_decision": tags.get("onnx_int8_decision", ""),
    }
    if onnx_export.PROBE_FILE in files:
        onnx["probe"] = onnx_export.PROBE_FILE
    if tags.get("onnx_served_test_accuracy"):
        # What evaluate measured for the served file (the Keras model's is in `metrics`).
        onnx["served_test_accuracy"] = float(tags["onnx_served_test_accuracy"])
    return onnx


def exported_onnx(
    tag: str, local: Path, folder: Path, check_images: np.ndarray
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Export the version's Keras model (registered before evaluate exported ONNX) to `folder`
    and check it; its files by name and what they are."""
    from pipeline.model import devices, onnx_export

    keras_files = sorted(local.rglob("*.keras"))
    if not keras_files:
        raise PackageError(
            f"{tag}: the registered model holds no .onnx or .keras file (found"
            f" {sorted(str(p.relative_to(local)) for p in local.rglob('*'))[:10]});"
            " it must be logged by `evaluate` (or with mlflow.keras)"
        )
    devices.import_tensorflow()
    import keras

    model = keras.saving.load_model(keras_files[0], compile=False)
    try:
        agreement = onnx_export.export_checked(model, folder, check_images)
    except onnx_export.ExportMismatch as error:
        raise PackageError(f"{tag}: {error}") from None
    path = folder / onnx_export.FP32_FILE
    log.warning(
        "%s was registered without an ONNX file: exported its Keras model here (float32, no int8)"
        " and checked it on %d images: the same classes, probabilities within %.2g",
        tag,
        agreement.images,
        agreement.max_difference,
    )
    onnx = {
        "served_file": path.name,
        "precision": "fp32",
        "sha256": onnx_export.sha256(path),
        "files": [path.name],
        "exported_by": "serving.tools.package",
    }
    return {path.name: path}, onnx


def package(
    *,
    registered_model: str,
    tracking_uri: str,
    alias: str = ALIAS,
    check_images: np.ndarray | None = None,
) -> str:
    """Import the version `alias` names into the BentoML store (once); return its tag.
    `check_images` (float32 (N, 28, 28)) check an export made here (`import_version`); by
    default, `CHECK_IMAGES` random images."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        version = registry.version_by_alias(client, registered_model, alias)
    except registry.NoSuchVersion as error:
        raise PackageError(
            f"no version of {registered_model!r} has alias {alias!r} in {tracking_uri}"
            f" ({error}). Run `make repro` (or `dvc repro`) to train and register one,"
            " or set REGISTERED_MODEL / MLFLOW_TRACKING_URI to where it lives"
        ) from None
    tag = tag_of(registered_model, version)
    stored = stored_model(tag, run_id=version.run_id)
    if stored is not None:
        return stored
    metadata = champion_metadata(
        version, registered_model=registered_model, tracking_uri=tracking_uri
    )
    if check_images is None:
        check_images = np.random.default_rng(0).random((CHECK_IMAGES, 28, 28), dtype=np.float32)
    import_version(
        client, version, tag=tag, alias=alias, metadata=metadata, check_images=check_images
    )
    log.info(
        "imported %s (run %s) into the BentoML store as %s", registered_model, version.run_id, tag
    )
    return tag


def validation_images(path: Path) -> np.ndarray | None:
    """The prepare stage's validation images, or None when they are not there."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        return data["x"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--alias", default=ALIAS)
    parser.add_argument("--tag-file", type=Path, help="also write the tag to this file")
    parser.add_argument(
        "--val",
        type=Path,
        default=Path("data/prepared/val.npz"),
        help="validation images that check an ONNX export made here (default: random images)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipeline import tracking

    try:
        tag = package(
            registered_model=default_registered_model(args.params),
            tracking_uri=tracking.tracking_uri(),
            alias=args.alias,
            check_images=validation_images(args.val),
        )
    except PackageError as error:
        raise SystemExit(f"package: {error}") from None
    if args.tag_file:
        args.tag_file.write_text(tag + "\n")
    print(tag)


if __name__ == "__main__":
    main()
