"""The same sweep on a 1-node and a 2-node Ray cluster (1 CPU each): trials per minute, and Ray's
overhead per trial (the trial's wall time, as Tune saw it, against its fit time).

    python bench/sweep_scaling.py                 # 4 trials of an mlp, 20,000 images, 3 epochs
    python bench/sweep_scaling.py --train-size 54000 --epochs 20   # trials long enough

Goals: 2 nodes give >= 1.7x the trials per minute of 1 node; Ray's overhead <= 10% of a trial.
The data is Fashion-MNIST (Debian's `dataset-fashion-mnist`, through the pipeline's own
download and prepare stages), cut to --train-size training images. Both nodes are on this
machine, on loopback addresses 127.0.0.2 and 127.0.0.3: on a machine with fewer free cores
than nodes the 2-node figure measures the machine, not Ray (the report says how many cores).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import ray_hosts  # noqa: E402

VARIANT = {
    "model": {"architecture": "mlp", "dense": [256], "batch_norm": True, "dropout": 0.1},
    "fit": {"batch_size": 128, "epochs": 2, "seed": 1, "learning_rate": 0.002},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    return parser.parse_args()


def make_project(root: Path, args: argparse.Namespace) -> Path:
    """A folder with params.yaml (the mlp, a sweep over the learning rate) and prepared data."""
    variant = {"model": VARIANT["model"], "fit": VARIANT["fit"] | {"epochs": args.epochs}}
    values = [round(0.001 * (index + 1), 4) for index in range(args.trials)]
    params = {
        "train": {"variants": ["mlp"], "models": {"mlp": variant}},
        "sweep": {
            "trials": 1,
            "space": {"fit.learning_rate": {"kind": "grid", "values": values}},
            # Off: every trial the same size, so the two runs do the same work.
            "early_stopping": {"enabled": False},
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    python = sys.executable
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for command in (
        [
            python,
            "-m",
            "pipeline.stages.download",
            "--params",
            "params.yaml",
            "--system-root",
            "/usr/share/datasets",
            "--out",
            "raw",
        ],
        [
            python,
            "-m",
            "pipeline.stages.prepare",
            "--params",
            "params.yaml",
            "--raw",
            "raw",
            "--out",
            "data/prepared",
            "--metrics",
            "p.json",
            "--class-counts",
            "cc",
            "--plot",
            "s.png",
        ],
    ):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    path = root / "data" / "prepared" / "train.npz"
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["x"], arrays["y"] = arrays["x"][: args.train_size], arrays["y"][: args.train_size]
    np.savez(path, **arrays)
    return root


def sweep_on(nodes: int, project: Path, root: Path) -> dict[str, float]:
    """Run the sweep on a fresh cluster of `nodes` nodes; its figures."""
    with ray_hosts.loopback(root) as hosts:
        head = ray_hosts.start_cluster(hosts) if nodes == 2 else ray_hosts.start_head(hosts)
        out = root / f"sweeps-{nodes}"
        command = [sys.executable, "-m", "pipeline.sweep", "--variant", "mlp", "--address", head]
        command += ["--out", str(out), "--tracking-uri", f"sqlite:///{root / f'mlflow{nodes}.db'}"]
        started = time.perf_counter()
        env = hosts.env | {"PYTHONPATH": str(REPO)}
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(
                f"the {nodes}-node sweep failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
    with (out / "mlp" / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    walls = [float(row["wall_seconds"]) for row in rows]
    fits = [float(row["fit_seconds"]) for row in rows]
    insides = [float(row["trial_seconds"]) for row in rows]
    return {
        "seconds": seconds,
        "trials_per_minute": 60 * len(rows) / seconds,
        "trial_wall": statistics.mean(walls),
        "trial_fit": statistics.mean(fits),
        # Everything but the fit: Ray's part, the trial's own set-up (imports, MLflow, model).
        "overhead": statistics.mean((w - f) / w for w, f in zip(walls, fits, strict=True)),
        # Ray's part alone: Tune's wall time minus the time the trial function ran.
        "ray_part": statistics.mean((w - i) / w for w, i in zip(walls, insides, strict=True)),
        "nodes_used": len({row["node_ip"] for row in rows}),
    }


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "project").mkdir()
        project = make_project(root / "project", args)
        figures = {nodes: sweep_on(nodes, project, root) for nodes in (1, 2)}
    print(
        f"machine: {os.cpu_count()} cores (shared with whatever else runs); "
        f"{args.trials} trials, mlp, {args.train_size} images, {args.epochs} epochs"
    )
    for nodes, row in figures.items():
        print(
            f"{nodes} node(s): {row['seconds']:.1f} s, {row['trials_per_minute']:.2f} trials/min,"
            f" trial wall {row['trial_wall']:.1f} s, fit {row['trial_fit']:.1f} s,"
            f" overhead {100 * row['overhead']:.0f}% of a trial, of which Ray's own"
            f" {100 * row['ray_part']:.0f}% (nodes used: {row['nodes_used']})"
        )
    speedup = figures[2]["trials_per_minute"] / figures[1]["trials_per_minute"]
    overhead = max(row["overhead"] for row in figures.values())
    ray_part = max(row["ray_part"] for row in figures.values())
    verdict = "met" if speedup >= 1.7 else "NOT met"
    print(f"2 nodes / 1 node: {speedup:.2f}x (goal >= 1.7x): {verdict}")
    print(
        f"overhead per trial (wall - fit): {100 * overhead:.0f}% (goal <= 10%):"
        f" {'met' if overhead <= 0.10 else 'NOT met'}; Ray's own part {100 * ray_part:.0f}%"
    )


if __name__ == "__main__":
    main()
