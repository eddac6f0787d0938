"""Bring the registry's champion into the BentoML model store, keeping its provenance.

`python -m serving.package` resolves `models:/<name>@champion` in MLflow, copies the native Keras
file into the BentoML store as `<name>:v<version>` with the registry version, run id, class names,
input contract and metrics as metadata, and prints the tag. Re-running it for the same version
reuses the stored model.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline import registry

log = logging.getLogger(__name__)
# The alias `make serve` packages; `--alias challenger` packages the one waiting behind it.
ALIAS = registry.CHAMPION


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
    from pipeline import datasets

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


def stored_model(tag: str, *, run_id: str) -> str | None:
    """The tag of the BentoML model stored as `tag` from run `run_id`, or None when there is none.

    The tag holds only the version number; a store filled from another registry (or a recreated
    one) can hold a different model under the same tag, which is deleted so it can be replaced.
    """
    import bentoml

    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None
    if stored.info.metadata.get("run_id") == run_id:
        log.info("%s already in the BentoML store (%s)", tag, stored.path)
        return str(stored.tag)
    log.info("%s in the BentoML store came from another run: replacing it", tag)
    bentoml.models.delete(tag)
    return None


def import_version(
    client: Any, version: Any, *, tag: str, alias: str, metadata: dict[str, Any]
) -> None:
    """Copy the version's native Keras file into the BentoML store as `tag`, with `metadata`."""
    import bentoml
    import mlflow

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
        keras_files = sorted(local.rglob("*.keras"))
        if not keras_files:
            raise PackageError(
                f"{tag}: the registered model holds no .keras file (found"
                f" {sorted(str(p.relative_to(local)) for p in local.rglob('*'))[:10]});"
                " it must be logged with mlflow.keras"
            )
        with bentoml.models.create(
            tag,
            module="serving.service",
            labels={"alias": alias, "dataset": metadata["dataset"], "variant": metadata["variant"]},
            metadata=metadata,
        ) as model:
            shutil.copyfile(keras_files[0], model.path_of("model.keras"))


def package(*, registered_model: str, tracking_uri: str, alias: str = ALIAS) -> str:
    """Import the version `alias` names into the BentoML store (once); return its tag."""
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
    tag = f"{registered_model}:v{version.version}"
    stored = stored_model(tag, run_id=version.run_id)
    if stored is not None:
        return stored
    metadata = champion_metadata(
        version, registered_model=registered_model, tracking_uri=tracking_uri
    )
    import_version(client, version, tag=tag, alias=alias, metadata=metadata)
    log.info(
        "imported %s (run %s) into the BentoML store as %s", registered_model, version.run_id, tag
    )
    return tag


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--alias", default=ALIAS)
    parser.add_argument("--tag-file", type=Path, help="also write the tag to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipeline import tracking

    try:
        tag = package(
            registered_model=default_registered_model(args.params),
            tracking_uri=tracking.tracking_uri(),
            alias=args.alias,
        )
    except PackageError as error:
        raise SystemExit(f"package: {error}") from None
    if args.tag_file:
        args.tag_file.write_text(tag + "\n")
    print(tag)


if __name__ == "__main__":
    main()
