"""A real `bentoml serve` (two workers) shadowing another version on every request: users get the
champion's answers, the shadow's go to its records and `/metrics`, the agreement counts add up to
the images served, `python -m serving.tools.shadow` says the same, and an empty pointer file stops
the shadowing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest

from serving.shadow import MONITOR_NAME
from serving.tools.shadow import read_rows
from tests.support import bento, servers, shapes
from tests.support.client import drawing_bytes, image_file, oip_json

pytestmark = pytest.mark.slow
SHADOW_TAG = "shapes:v2"


@dataclass
class Shadowed:
    url: str
    pointer: Path
    monitor: Path


@pytest.fixture(scope="module")
def shadowed(shape_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shadowed]:
    """The shape model served, and an untrained model of the same classes as its shadow."""
    folder = tmp_path_factory.mktemp("shadow")
    home = folder / "bentoml"
    import shutil

    shutil.copytree(shape_store.home, home)
    with bento.bentoml_home(home):
        keras.utils.set_random_seed(7)
        other = shapes.tiny_model(len(shapes.SHAPES))
        bento.store_model(other, SHADOW_TAG, class_names=shapes.SHAPES, version="2")
    pointer = folder / "shadow-tag"
    pointer.write_text(SHADOW_TAG + "\n")
    environment = shape_store.environment(
        BENTOML_HOME=str(home),
        SERVING_WORKERS="2",
        MONITOR_DIR=str(folder / "monitoring"),
        SHADOW_FILE=str(pointer),
        SHADOW_FRACTION="1",
        FOLLOW_POLL_MS="200",
    )
    with servers.bentoml_serve(environment, log=folder / "serve.log") as server:
        server.wait_ready("/readyz", timeout=120)
        yield Shadowed(server.url, pointer, folder / "monitoring")


def send_requests(url: str) -> int:
    """Singles, pixel batches and OIP tensors on fresh connections (both workers); the images
    sent. Every answer is the champion's."""
    sent = 0
    for index in range(12):
        with httpx.Client(base_url=url, timeout=30) as http:
            image = {"image": image_file(drawing_bytes(index % 3, seed=index))}
            answer = http.post("/predict_image", files=image).json()
            batch = np.random.default_rng(index).random((5, 28, 28)).round(3)
            answers = http.post("/predict", json={"pixels": batch.tolist()}).json()
            tensor = (np.random.default_rng(index).random((3, 28, 28)) * 255).astype(np.uint8)
            oip = http.post("/v2/models/shapes/infer", json=oip_json(tensor))
        assert oip.status_code == 200, oip.text
        assert {a["model_version"] for a in [answer, *answers]} == {"1"}
        assert oip.json()["model_version"] == "1"
        sent += 1 + 5 + 3
    return sent


def shadow_counts(url: str) -> dict[str, float]:
    """classifier_shadow_images_total by agreement, summed over the workers."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        found = re.match(r'classifier_shadow_images_total\{.*agreement="(\w+)".*\} (\S+)', line)
        if found:
            counts[found[1]] = counts.get(found[1], 0.0) + float(found[2])
    return counts


def wait_for_count(url: str, total: int, timeout: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        counts = shadow_counts(url)
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def wait_for_rows(monitor: Path, total: int, timeout: float = 20) -> int:
    """How many shadow rows the records hold, once they hold `total` (each worker writes its
    pending rows as a block every MONITOR_FLUSH_MS, so the records lag the counters a little)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = (
            sum(map(len, read_rows(monitor)[0].values()))
            if (monitor / MONITOR_NAME).is_dir()
            else 0
        )
        if rows >= total or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_the_shadow_answers_beside_the_champion_and_is_counted(shadowed: Shadowed, tmp_path):
    sent = send_requests(shadowed.url)
    counts = wait_for_count(shadowed.url, sent)
    assert wait_for_rows(shadowed.monitor, sent) == sent
    assert counts.get("skipped", 0) == 0
    assert counts.get("same", 0) + counts.get("different", 0) == sent, counts
    # The untrained shadow disagrees on some images: both outcomes are counted.
    assert counts.get("different", 0) > 0
    metrics = httpx.get(f"{shadowed.url}/metrics", timeout=30).text
    timed = set(re.findall(r'classifier_forward_seconds_count\{version="(\d+)"\}', metrics))
    assert timed == {"1", "2"}
    report = tmp_path / "shadow.json"
    command = [sys.executable, "-m", "serving.tools.shadow", "--log", str(shadowed.monitor)]
    printed = subprocess.run(
        [*command, "--json", str(report)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.startswith(f"champion v1, shadow v2: {sent} images, the same class for")
    result = json.loads(report.read_text())["1/2"]
    assert result["images"] == sent
    assert result["agreement"] == pytest.approx(counts["same"] / sent)


def test_an_empty_pointer_stops_the_shadowing(shadowed: Shadowed):
    shadowed.pointer.write_text("")
    time.sleep(1.5)  # the workers read the file every 200 ms
    before = sum(shadow_counts(shadowed.url).values())
    send_requests(shadowed.url)
    time.sleep(1)
    assert sum(shadow_counts(shadowed.url).values()) == before
    shadowed.pointer.write_text(SHADOW_TAG + "\n")
