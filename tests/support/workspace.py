"""A throwaway project for stage tests: a git working directory and a params.yaml for it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# The dataset name the synthetic data is prepared under (also the MLflow experiment's name).
DATASET = "synthetic"

# Two small variants that learn the synthetic task in a few epochs; tests copy and change them.
TINY_VARIANTS: dict[str, Any] = {
    "mlp": {
        "model": {"architecture": "mlp", "dense": [32], "batch_norm": True, "dropout": 0.1},
        "fit": {
            "learning_rate": 0.01,
            "schedule": "cosine",
            "warmup_epochs": 1,
            "batch_size": 32,
            "epochs": 3,
            "seed": 1,
        },
    },
    "cnn": {
        "model": {
            "architecture": "cnn",
            "conv_blocks": [{"filters": 4, "kernel_size": 3, "pool": True, "dropout": 0.1}],
            "dense": [16],
            # As the default cnn: every stage, the registry and serving see a mirror-averaged model.
            "test_time_flip": True,
        },
        "fit": {
            "learning_rate": 0.01,
            "batch_size": 32,
            "epochs": 3,
            "seed": 1,
            "augment_flip": True,
        },
    },
}


@dataclass(frozen=True)
class Workspace:
    """A temporary project folder that is the working directory and a git repository."""

    root: Path
    commit: str


def write_params(path: Path, *, variants=("mlp", "cnn"), models=None, evaluate=None) -> Path:
    """A params.yaml with the tiny variants (or `models`) and the given `evaluate` section."""
    params = {
        "train": {"variants": list(variants), "models": models or TINY_VARIANTS},
        "evaluate": {"registered_model": "synthetic-classifier", "misclassified_examples": 10}
        | (evaluate or {}),
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def git(root: Path, *args: str) -> str:
    """Run git in `root` as a fixed test author; its standard output."""
    command = ["git", "-c", "user.name=tests", "-c", "user.email=tests@example.invalid", *args]
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout


def init_repository(root: Path) -> Workspace:
    """Make `root` a git repository with one clean commit."""
    git(root, "init", "--quiet")
    (root / "README").write_text("test workspace\n")
    git(root, "add", "README")
    git(root, "commit", "--quiet", "-m", "test workspace")
    return Workspace(root=root, commit=git(root, "rev-parse", "HEAD").strip())
