"""The files one stage hands to the next, as typed, frozen records with `read` and `write`.

    download  -> data/raw/manifest.json          RawManifest
    prepare   -> data/prepared/meta.json         PreparedMeta
    train     -> models/<variant>/run.json       TrainedRun
              -> metrics/train/<variant>.json    TrainMetrics
    evaluate  -> metrics/evaluate.json           EvaluateMetrics
              -> models/champion.json            Champion

Every reader and writer goes through these classes, so a renamed or missing key fails where the
file is read, naming the file, the key and the stage that writes it, not three stages later.
Importing this does nothing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from pipeline import config, io


class ContractError(ValueError):
    """A hand-off file is missing, is not JSON, or does not hold what its contract says."""


class Contract:
    """Base of the hand-off records: JSON on disk, a frozen dataclass in memory."""

    # The stage that writes the file, named in errors so one knows what to re-run.
    writer: ClassVar[str]
    # The name of the file inside its stage's output folder, for the files that live in one.
    file_name: ClassVar[str]

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "") -> Self:
        """Build from plain JSON data; an unknown, missing or mistyped key is a ContractError."""
        try:
            return config.build(cls, data, "")
        except config.ConfigError as error:
            where = f"{source}: " if source else ""
            raise ContractError(
                f"{where}{error} (this file is written by stage `{cls.writer}`; re-run it with"
                " `dvc repro`)"
            ) from None

    @classmethod
    def read(cls, path: Path) -> Self:
        """Read and check the file at `path`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ContractError(
                f"{path} is missing; stage `{cls.writer}` writes it (run `dvc repro`)"
            ) from None
        except json.JSONDecodeError as error:
            raise ContractError(f"{path} is not valid JSON ({error})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def write(self, path: Path) -> None:
        """Write the file atomically, as indented JSON in field order."""
        io.write_json(path, self.to_dict())


@dataclass(frozen=True)
class Source:
    """Where the raw files came from: `local_dir`, `system` or `mirror`, and its location."""

    kind: str
    location: str


@dataclass(frozen=True)
class Attempt:
    """A source that was tried and failed, and why."""

    source: Source
    error: str


@dataclass(frozen=True)
class RawFile:
    """One decompressed IDX file as `download` checked it."""

    file: str
    sha256: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RawManifest(Contract):
    """`data/raw/manifest.json`: what `download` fetched, from where, with content checksums."""

    writer: ClassVar[str] = "download"
    file_name: ClassVar[str] = "manifest.json"

    dataset: str
    class_names: tuple[str, ...]
    source: Source
    tried: tuple[Attempt, ...]
    # By role (train_images, train_labels, test_images, test_labels).
    files: dict[str, RawFile]
    # Examples per split: train, test.
    counts: dict[str, int]

    @property
    def sha256(self) -> dict[str, str]:
        """The sha256 of each file's decompressed content, by role."""
        return {role: entry.sha256 for role, entry in self.files.items()}


@dataclass(frozen=True)
class PreparedMeta(Contract):
    """`data/prepared/meta.json`: the prepared splits' dataset, provenance and sizes."""

    writer: ClassVar[str] = "prepare"
    file_name: ClassVar[str] = "meta.json"

    dataset: str
    source: Source
    class_names: tuple[str, ...]
    # sha256 of each raw file's decompressed content, by role.
    sha256: dict[str, str]
    # Examples per split: train, val, test.
    counts: dict[str, int]
    val_fraction: float
    seed: int

    @property
    def content_sha256(self) -> str:
        """One digest of the four raw files: the data a model was trained and tested on."""
        return io.digest(self.sha256)


@dataclass(frozen=True)
class TrainMetrics(Contract):
    """`metrics/train/<variant>.json`: how one variant's training ended (also in run.json).

    The `final_val_*` figures are the saved (served) model's, mirror-averaged where the variant
    has `test_time_flip`; `best_val_accuracy` is the best epoch of the fit's own per-epoch
    validation, which runs the network once per image."""

    writer: ClassVar[str] = "train"

    final_val_loss: float
    final_val_accuracy: float
    epochs_run: int
    train_seconds: float
    best_val_accuracy: float


@dataclass(frozen=True)
class TrainedRun(Contract):
    """`models/<variant>/run.json`: the MLflow run that trained the variant and its logged model."""

    writer: ClassVar[str] = "train"
    file_name: ClassVar[str] = "run.json"

    variant: str
    run_id: str
    experiment_id: str
    model_uri: str
    tracking_uri: str
    metrics: TrainMetrics


@dataclass(frozen=True)
class VariantMetrics:
    """One variant's validation and test results, as `evaluate` measured them.

    In the order `dvc exp show` lists them: what people compare first.
    """

    test_accuracy: float
    val_accuracy: float
    test_macro_f1: float
    test_loss: float
    val_loss: float
    # Temperature scaling (pipeline.model.calibration): T fitted on validation, its effect on test.
    temperature: float
    test_ece: float
    test_ece_calibrated: float
    test_loss_calibrated: float


@dataclass(frozen=True)
class Choice:
    """A variant `evaluate` chose, the registered version it became and whether it is champion."""

    variant: str
    version: int
    promoted: bool


# Dataclasses take base fields in reverse MRO order, so the JSON reads variant, version,
# promoted, then the metrics, flat (`dvc metrics show` lists chosen.test_accuracy, ...).
@dataclass(frozen=True)
class Chosen(VariantMetrics, Choice):
    """The choice and the chosen variant's results."""


@dataclass(frozen=True)
class EvaluateMetrics(Contract):
    """`metrics/evaluate.json`: the choice and every variant's results (DVC metrics)."""

    writer: ClassVar[str] = "evaluate"

    chosen: Chosen
    variants: dict[str, VariantMetrics]


@dataclass(frozen=True)
class Candidate(Choice):
    """What this evaluation registered, and why the promotion gate let it through or not."""

    reason: str


@dataclass(frozen=True)
class Champion(Contract):
    """`models/champion.json`: the registered version that carries the champion alias."""

    writer: ClassVar[str] = "evaluate"

    registered_model: str
    # An int: a SQLite store gives versions as ints, a tracking server as strings.
    version: int
    model_uri: str
    alias_uri: str
    # None for a champion registered by hand without the tags evaluate sets.
    variant: str | None
    run_id: str
    class_names: tuple[str, ...]
    metrics: dict[str, float]
    tracking_uri: str
    candidate: Candidate
