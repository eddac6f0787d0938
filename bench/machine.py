"""What machine a benchmark ran on: CPU model, cores and the versions that matter."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("bentoml", "mlflow", "tensorflow-cpu", "tensorflow", "keras", "aiohttp")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU model, core counts and the versions of what serves and drives the load."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    lscpu: dict[str, str] = {}
    if shutil.which("lscpu"):
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in output.splitlines():
            key, _, value = line.partition(":")
            lscpu[key.strip()] = value.strip()
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "python": platform.python_version(),
        "versions": versions,
    }
