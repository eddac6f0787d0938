"""Typed, frozen configuration loaded from params.yaml; an unknown or mistyped key is an error."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.data import datasets
from pipeline.typed import ConfigError, build

# A switch whose default depends on the data: `auto` is resolved when the params are loaded.
Auto = Literal["auto"]


@dataclass(frozen=True)
class DataConfig:
    """Section `data`: which dataset, and where to take it from."""

    dataset: str = "fashion_mnist"
    # A folder holding the four MNIST-format files; when set it is the only source tried.
    local_dir: str | None = None
    # Class names for data whose dataset is not one we know (KMNIST from a local folder, say).
    class_names: tuple[str, ...] | None = None
    # Whether the classes keep their meaning mirrored left-right; null = what the dataset says
    # (datasets.py: Fashion-MNIST yes, MNIST and unknown data no). Decides `auto` mirroring.
    mirror_symmetric: bool | None = None

    def __post_init__(self) -> None:
        if self.dataset not in datasets.DATASETS and (
            self.local_dir is None or self.class_names is None
        ):
            raise ConfigError(
                f"data.dataset: {self.dataset!r} is not a known dataset"
                f" {sorted(datasets.DATASETS)};"
                " for other MNIST-format data set both data.local_dir and data.class_names"
            )
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"data.class_names: names must be unique, got {self.class_names}")

    @property
    def resolved_class_names(self) -> tuple[str, ...]:
        """The class names to use: `class_names` when given, else the known dataset's."""
        if self.class_names is not None:
            return self.class_names
        return datasets.get(self.dataset).class_names

    @property
    def mirror_safe(self) -> bool:
        """Whether mirroring keeps the classes: `mirror_symmetric` when given, else the
        dataset's own answer (no for data we do not know)."""
        if self.mirror_symmetric is not None:
            return self.mirror_symmetric
        return datasets.mirror_symmetric(self.dataset)


@dataclass(frozen=True)
class PrepareConfig:
    """Section `prepare`: the stratified validation split."""

    val_fraction: float = 0.1
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"prepare.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class ConvBlockConfig:
    """One convolutional block: `convs` conv layers, then optional max-pooling and dropout."""

    filters: int
    kernel_size: int = 3
    convs: int = 1
    pool: bool = True
    dropout: float = 0.0
    activation: str = "relu"


@dataclass(frozen=True)
class ModelConfig:
    """An architecture: an MLP (`dense` only) or a CNN (`conv_blocks`, then `dense`).

    `activation` and `dropout` apply to every dense block, `head_dropout` only to the features
    the output layer sees (after the last dense block, or after flattening when there is none).
    """

    architecture: Literal["mlp", "cnn"]
    conv_blocks: tuple[ConvBlockConfig, ...] = ()
    dense: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.0
    head_dropout: float = 0.0
    batch_norm: bool = False
    # Convolution padding: `same` keeps 28x28 until pooling, `valid` shrinks by kernel_size - 1.
    padding: Literal["same", "valid"] = "same"
    # Weights of every dense and conv layer (a Keras initializer name: random_normal, he_normal).
    kernel_initializer: str = "glorot_uniform"
    # A sigmoid output scores each class on its own; the loss and `evaluate` normalise the scores.
    output_activation: Literal["softmax", "sigmoid"] = "softmax"
    # Test-time mirroring: the trained model answers the mean of its output layer's pre-activation
    # scores for the image and for its mirror image; twice the inference cost. For a model
    # trained on mirrored images too (`fit.augment_flip`). `auto`: on where the data is mirror-safe
    # (`data.mirror_symmetric`).
    test_time_flip: bool | Auto = False

    def __post_init__(self) -> None:
        if self.architecture == "cnn" and not self.conv_blocks:
            raise ConfigError("model.conv_blocks: a cnn needs at least one conv block")
        if self.architecture == "mlp" and self.conv_blocks:
            raise ConfigError("model.conv_blocks: an mlp has no conv blocks")
        for name in ("dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class FitConfig:
    """How to fit a model: optimizer, schedule, batch, epochs, early stopping, speed switches."""

    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    # constant, or cosine decay to 0 over all epochs after `warmup_epochs` of linear warm-up.
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = 0
    batch_size: int = 128
    epochs: int = 10
    # Stop when val_loss has not improved for this many epochs and keep the best weights; 0 = off.
    early_stopping_patience: int = 0
    label_smoothing: float = 0.0
    # Random translation of training images by up to this many pixels; 0 = no augmentation.
    augment_shift: int = 0
    # Mirror each training image left-right with probability 1/2. `auto`: on where the data is
    # mirror-safe (`data.mirror_symmetric`).
    augment_flip: bool | Auto = False
    seed: int = 42
    # bf16 on CPUs with AVX512-BF16/AMX, fp16 on GPUs; weights and the softmax stay float32.
    mixed_precision: bool = False
    jit_compile: bool = False
    # `mirrored`: one fit over several devices of this machine (tf.distribute.MirroredStrategy):
    # every visible GPU, or `logical_cpu_devices` CPU devices when set (pipeline.model.distribute).
    distribute: Literal["none", "mirrored"] = "none"
    logical_cpu_devices: int = 0

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fit.{name} must be positive, got {getattr(self, name)}")
        if self.logical_cpu_devices < 0 or self.logical_cpu_devices == 1:
            raise ConfigError(
                "fit.logical_cpu_devices must be 0 (off) or at least 2,"
                f" got {self.logical_cpu_devices}"
            )


@dataclass(frozen=True)
class VariantConfig:
    """A named model variant: architecture plus fitting recipe."""

    model: ModelConfig
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Section `train`: the variants `dvc repro` trains, and every variant one may list."""

    variants: tuple[str, ...]
    models: dict[str, VariantConfig]

    def __post_init__(self) -> None:
        missing = [name for name in self.variants if name not in self.models]
        if missing:
            raise ConfigError(
                f"train.variants lists {missing}, which train.models does not define;"
                f" defined: {sorted(self.models)}"
            )


@dataclass(frozen=True)
class Int8Config:
    """Section `evaluate.int8`: when the statically quantized ONNX file is served instead of the
    float32 one (`pipeline.model.onnx_export`). Both are always built and registered."""

    # auto: serve int8 when it keeps the answers (below); fp32: always serve the float32 file.
    serve: Literal["auto", "fp32"] = "auto"
    # Most validation accuracy int8 may lose, in percentage points.
    max_accuracy_drop: float = 0.1
    # Least fraction of validation images whose class int8 must keep.
    min_agreement: float = 0.995
    # Training images the quantizer calibrates its activation ranges on (never test images).
    calibration_images: int = 1000
    # Most validation ECE (expected calibration error) int8 may add, in percentage points.
    max_ece_increase: float = 0.5

    def __post_init__(self) -> None:
        if self.max_accuracy_drop < 0.0:
            raise ConfigError(
                "evaluate.int8.max_accuracy_drop must be at least 0 (percentage points), got"
                f" {self.max_accuracy_drop}"
            )
        if not 0.0 < self.min_agreement <= 1.0:
            raise ConfigError(
                f"evaluate.int8.min_agreement must be in (0, 1], got {self.min_agreement}"
            )
        if self.max_ece_increase < 0.0:
            raise ConfigError(
                "evaluate.int8.max_ece_increase must be at least 0 (percentage points), got"
                f" {self.max_ece_increase}"
            )
        if self.calibration_images < 1:
            raise ConfigError(
                "evaluate.int8.calibration_images must be at least 1, got"
                f" {self.calibration_images}"
            )


@dataclass(frozen=True)
class BudgetConfig:
    """Section `evaluate.budget`: what the served file may cost, measured on the machine that
    registers it (`pipeline.model.onnx_export.served_costs`). A version over any limit is
    registered but stays challenger. None: no limit."""

    # Median time of one image through the served file, one ONNX Runtime thread, milliseconds.
    max_latency_ms: float | None = None
    # The served file's size, MiB.
    max_file_mib: float | None = None
    # What opening the served file's ONNX Runtime session adds to the process's memory, MiB.
    max_session_mib: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "max_file_mib", "max_session_mib"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"evaluate.budget.{name} must be positive or null, got {value}")

    def exceeded(self, costs: Mapping[str, float | None]) -> list[str]:
        """What `costs` (latency_ms, file_mib, session_mib) exceed, in words; [] when none."""
        over = []
        for key, unit in (("latency_ms", "ms"), ("file_mib", "MiB"), ("session_mib", "MiB")):
            limit, found = getattr(self, f"max_{key}"), costs.get(key)
            if limit is not None and found is not None and found > limit:
                over.append(f"{key.split('_')[0]} {found:.3g} {unit} > {limit:g} {unit}")
        return over


@dataclass(frozen=True)
class EvaluateConfig:
    """Section `evaluate`: how to choose the best variant and register it."""

    select_by: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    min_improvement: float = 0.0
    # Registered model name; None means `<dataset>-classifier`.
    registered_model: str | None = None
    misclassified_examples: int = 25
    int8: Int8Config = field(default_factory=Int8Config)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


@dataclass(frozen=True)
class DriftCheck:
    """One check of the drift report: a named test and its threshold. `chi2` (class mix only)
    and `ks`: drift when the p-value is below the threshold; `psi`: when the population
    stability index is above it."""

    test: Literal["chi2", "ks", "psi"]
    threshold: float


@dataclass(frozen=True)
class DriftChecks:
    """The drift report's checks, one per recorded quantity."""

    class_mix: DriftCheck = DriftCheck("chi2", 0.001)
    confidence: DriftCheck = DriftCheck("ks", 0.001)
    mean_intensity: DriftCheck = DriftCheck("ks", 0.001)
    ink_fraction: DriftCheck = DriftCheck("ks", 0.001)
    box_height: DriftCheck = DriftCheck("ks", 0.001)
    box_width: DriftCheck = DriftCheck("ks", 0.001)

    def __post_init__(self) -> None:
        for item in fields(self):
            check = getattr(self, item.name)
            where = f"monitor.checks.{item.name}.threshold"
            if check.test in ("chi2", "ks") and not 0.0 < check.threshold < 1.0:
                raise ConfigError(
                    f"{where}: a {check.test} p-value threshold must be in (0, 1), got"
                    f" {check.threshold}"
                )
            if check.test == "psi" and check.threshold <= 0.0:
                raise ConfigError(
                    f"{where}: a psi threshold must be positive, got {check.threshold}"
                )


@dataclass(frozen=True)
class MonitorConfig:
    """Section `monitor`: the drift report of the served predictions (`serving.tools.monitor`),
    which no DVC stage runs."""

    # Fewer predictions than this get a "not enough data" answer instead of a verdict.
    min_predictions: int = 100
    checks: DriftChecks = field(default_factory=DriftChecks)

    def __post_init__(self) -> None:
        if self.min_predictions < 1:
            raise ConfigError(
                f"monitor.min_predictions must be at least 1, got {self.min_predictions}"
            )


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig | None = None
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # Not a DVC stage: `python -m pipeline.sweep` (Ray Tune) checks and reads this section
    # (pipeline.sweep.settings.of). No stage does, so editing the sweep leaves them up to date.
    sweep: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # `auto` mirroring becomes what the data allows, so every stage sees plain booleans.
        if self.train is not None:
            object.__setattr__(self, "train", resolve_mirroring(self.train, self.data))

    @property
    def registered_model(self) -> str:
        return self.evaluate.registered_model or f"{self.data.dataset.replace('_', '-')}-classifier"

    def mirroring_warnings(self, variant: str) -> list[str]:
        """Why `variant`'s mirroring is wrong for this data: one line per switch set on for
        data whose classes change meaning mirrored (`auto` would have left it off)."""
        if self.train is None or self.data.mirror_safe:
            return []
        chosen = self.train.models[variant]
        switches = {
            f"train.models.{variant}.fit.augment_flip": chosen.fit.augment_flip,
            f"train.models.{variant}.model.test_time_flip": chosen.model.test_time_flip,
        }
        return [
            f"{key} is on, but the classes of {self.data.dataset!r} do not keep their meaning"
            " mirrored (a mirrored 2 is not a 2), so mirrored images can be confused with"
            f" another class; set it to auto (or false), or set data.mirror_symmetric: true"
            " if every class is the same mirrored"
            for key, value in switches.items()
            if value is True
        ]


def resolve_mirroring(train: TrainConfig, data: DataConfig) -> TrainConfig:
    """`train` with every `auto` mirroring switch (`fit.augment_flip`, `model.test_time_flip`)
    set to whether `data` is mirror-safe."""
    safe = data.mirror_safe

    def resolved(value: bool | str) -> bool:
        return safe if value == "auto" else bool(value)

    models = {
        name: dataclasses.replace(
            variant,
            model=dataclasses.replace(
                variant.model, test_time_flip=resolved(variant.model.test_time_flip)
            ),
            fit=dataclasses.replace(variant.fit, augment_flip=resolved(variant.fit.augment_flip)),
        )
        for name, variant in train.models.items()
    }
    return dataclasses.replace(train, models=models)


def load(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run from the repository root") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    try:
        return build(Params, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
