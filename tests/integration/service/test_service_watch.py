"""The watch: every answered prediction is a row of `bentoml.monitor`'s log (all endpoints, OIP
included) and a count in `/metrics`; the page's `show_input` option shows the model input."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from serving import preprocess
from serving.watch import STATISTICS, input_statistics
from tests.support import servers
from tests.support.client import (
    assert_refused,
    drawing_bytes,
    image_file,
    oip_binary,
    oip_json,
    oip_probabilities,
)
from tests.support.shapes import SHAPES


def rows_since(folder: Path, since: datetime, count: int, timeout: float = 20) -> list[dict]:
    """The watch's rows written at or after `since`, once there are `count` of them (the watch
    writes after the answer has gone out, so they may lag it a little)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [
            row
            for path in sorted(folder.rglob("data.*.log*"))
            for row in map(json.loads, path.read_text().splitlines())
            if datetime.fromisoformat(row["timestamp"]) >= since
        ]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def assert_rows_match(rows: list[dict], answers: list[dict], images: np.ndarray, endpoint: str):
    """Rows of one request: its endpoint, one request id, the answers' classes and confidence,
    and the statistics of the model inputs."""
    assert [row["endpoint"] for row in rows] == [endpoint] * len(answers)
    assert len({row["request_id"] for row in rows}) == 1
    assert [row["class_name"] for row in rows] == [answer["class_name"] for answer in answers]
    assert [row["label"] for row in rows] == [answer["label"] for answer in answers]
    for row, answer in zip(rows, answers, strict=True):
        assert row["confidence"] == pytest.approx(max(answer["probabilities"].values()), abs=2e-6)
    expected = input_statistics(images)
    for name in STATISTICS:
        np.testing.assert_allclose([row[name] for row in rows], expected[name], atol=1e-6)


def test_every_endpoint_is_recorded(asgi_client: TestClient, asgi_monitor_dir: Path, shape_store):
    since = datetime.now()
    drawings = [drawing_bytes(label, seed=40 + label) for label in (3, 0, 4, 1)]
    inputs = np.stack([preprocess.preprocess(data) for data in drawings])
    pixels = shape_store.images[:5]
    answers = {
        "predict_image": [
            asgi_client.post("/predict_image", files={"image": image_file(drawings[0])}).json()
        ],
        "predict_images": asgi_client.post(
            "/predict_images", files=[("images", image_file(data)) for data in drawings[1:]]
        ).json(),
        "predict": asgi_client.post("/predict", json={"pixels": pixels.tolist()}).json(),
    }
    oip = asgi_client.post(
        "/v2/models/shapes/infer", json=oip_json(np.rint(pixels[:2] * 255).astype(np.uint8))
    )
    answers["oip_infer"] = [
        {
            "label": int(row.argmax()),
            "class_name": SHAPES[int(row.argmax())],
            "probabilities": dict(zip(SHAPES, row.tolist(), strict=True)),
        }
        for row in oip_probabilities(oip)
    ]
    expected_inputs = {
        "predict_image": inputs[:1],
        "predict_images": inputs[1:],
        "predict": pixels,
        "oip_infer": np.rint(pixels[:2] * 255) / 255,
    }
    rows = rows_since(asgi_monitor_dir, since, 11)
    assert len(rows) == 1 + 3 + 5 + 2
    by_endpoint = {name: [row for row in rows if row["endpoint"] == name] for name in answers}
    for name, answered in answers.items():
        assert_rows_match(by_endpoint[name], answered, expected_inputs[name], name)
    assert len({row["request_id"] for row in rows}) == 4
    assert {(row["model_name"], row["model_version"]) for row in rows} == {("shapes", "1")}
    assert all("pixels" not in row for row in rows)  # off unless MONITOR_PIXEL_RATE is set


def test_refusals_are_not_recorded(asgi_client: TestClient, asgi_monitor_dir: Path) -> None:
    since = datetime.now()
    response = asgi_client.post("/predict_image", files={"image": image_file(b"not an image")})
    assert_refused(response, 400, "not an image")
    assert asgi_client.post("/predict", json={"pixels": [[300] * 784]}).status_code == 400
    drawing = drawing_bytes(0, seed=1)
    assert asgi_client.post("/predict_image", files={"image": image_file(drawing)}).is_success
    # Rows follow the requests' order, so a refusal's row would come before the drawing's.
    assert [row["endpoint"] for row in rows_since(asgi_monitor_dir, since, 1)] == ["predict_image"]


def test_show_input_is_the_model_input(asgi_client: TestClient) -> None:
    data = drawing_bytes(4, seed=21, mode="RGBA")
    plain = asgi_client.post("/predict_image", files={"image": image_file(data)}).json()
    shown = asgi_client.post("/predict_image?show_input=true", files={"image": image_file(data)})
    assert shown.status_code == 200, shown.text
    answer = shown.json()
    assert {key: value for key, value in answer.items() if key != "input"} == plain
    picture = np.array(answer["input"])
    assert picture.shape == (28, 28)
    np.testing.assert_allclose(picture, preprocess.preprocess(data), atol=1e-4)
    refused = asgi_client.post("/predict_image?show_input=maybe", files={"image": image_file(data)})
    assert_refused(refused, 400, "show_input must be true or false, got 'maybe'")


def test_the_page_and_its_files_are_served(asgi_client: TestClient) -> None:
    page = asgi_client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    linked = re.findall(r'(?:src|href)="(/[^"]*)"', page.text)
    assert {"/ui/static/app.js", "/ui/static/style.css"} <= set(linked)
    for path in linked:
        if path.startswith("/ui/"):  # the others are BentoML's (/ and /metrics)
            assert asgi_client.get(path).status_code == 200, path
    # Nothing comes from elsewhere: no absolute URL anywhere in the page's own files.
    for path in ("/ui", "/ui/static/app.js", "/ui/static/style.css"):
        assert not re.search(r"https?://|//cdn", asgi_client.get(path).text), path


METRIC = re.compile(
    r'^classifier_predictions_total\{class_name="([^"]*)",endpoint="([^"]*)"\} (\S+)'
)


def predictions_metric(url: str) -> tuple[Counter, float]:
    """Predictions by (endpoint, class) and the confidence histogram's count for /predict."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    counts: Counter = Counter()
    confidence = 0.0
    for line in text.splitlines():
        if match := METRIC.match(line):
            counts[(match[2], match[1])] += float(match[3])
        elif line.startswith('classifier_confidence_count{endpoint="predict"}'):
            confidence = float(line.split()[-1])
    return counts, confidence


def wait_for(check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


@pytest.mark.slow
def test_metrics_count_predictions_by_class(fashion_served, fashion_store) -> None:
    before, confidence_before = predictions_metric(fashion_served.url)
    pixels = fashion_store.test_images[:40].tolist()
    answers = httpx.post(f"{fashion_served.url}/predict", json={"pixels": pixels}, timeout=60)
    assert answers.status_code == 200, answers.text
    expected = Counter(("predict", answer["class_name"]) for answer in answers.json())

    def counted():
        after, confidence_after = predictions_metric(fashion_served.url)
        delta = after - before
        return (delta, confidence_after - confidence_before) if delta == expected else None

    result = wait_for(counted)
    assert result is not None, predictions_metric(fashion_served.url)[0] - before
    assert result[1] == 40
    # BentoML's own metrics are still there.
    assert "bentoml_service_request_total" in httpx.get(f"{fashion_served.url}/metrics").text


@pytest.mark.slow
def test_a_real_server_records_requests_and_sampled_pixels(
    fashion_served, fashion_store, fashion_monitor_dir: Path
) -> None:
    # This server runs with MONITOR_PIXEL_RATE=1: every row also carries its 28x28 input.
    since = datetime.now()
    images = fashion_store.test_images[100:140]
    named = []
    for start in range(0, 40, 2):  # a connection each, so both workers take some
        reply = httpx.post(
            f"{fashion_served.url}/v2/models/fashion-mnist-classifier/infer",
            **oip_binary(images[start : start + 2]),
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        named.append(str(int(reply.headers["x-bentoml-request-id"], 16)))
    rows = rows_since(fashion_monitor_dir, since, 40)
    assert len(rows) == 40 and {row["endpoint"] for row in rows} == {"oip_infer"}
    # Tracing is off (no TRACING=1), and still each answer names the request id of its rows.
    assert sorted(row["request_id"] for row in rows) == sorted(named * 2)
    recorded = sorted(tuple(row["pixels"]) for row in rows)
    assert recorded == sorted(tuple(image.ravel().tolist()) for image in images)


def all_rows(folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(folder.rglob("data.*.log*"))
        for line in path.read_text().splitlines()
    ]


@pytest.mark.slow
def test_rows_still_pending_when_the_service_stops_are_written(shape_store, tmp_path) -> None:
    """Rows are written in blocks (serving.monitors): with a flush interval longer than the test,
    all but each worker's first row are still pending when `bentoml serve` is stopped (SIGTERM),
    and every one of them is in the records afterwards, with its answer's request id."""
    monitoring = tmp_path / "monitoring"
    environment = shape_store.environment(
        SERVING_WORKERS="2", MONITOR_DIR=str(monitoring), MONITOR_FLUSH_MS="600000"
    )
    answered = []
    with servers.bentoml_serve(environment, log=tmp_path / "serve.log") as server:
        server.wait_ready("/readyz", timeout=120)
        for label in range(24):
            reply = httpx.post(
                f"{server.url}/predict_image",
                files={"image": image_file(drawing_bytes(label % len(SHAPES)))},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
            answered.append(int(reply.headers["X-BentoML-Request-ID"], 16))
        time.sleep(1.0)
        assert len(all_rows(monitoring)) <= 2, "rows were written before the interval"
    rows = all_rows(monitoring)
    assert sorted(int(row["request_id"]) for row in rows) == sorted(answered)
