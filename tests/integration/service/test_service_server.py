"""A real `bentoml serve`: start-up and fail-fast, batching under concurrency, no fetching of
URLs, a worker killed under load, and load shedding in our words."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import bento, servers, shapes
from tests.support.client import assert_answer, assert_refused, drawing_bytes, image_file

pytestmark = pytest.mark.slow


def test_batched_requests_each_get_their_own_answers(served, shape_store) -> None:
    def predict(count: int) -> list[dict[str, Any]]:
        pixels = shape_store.images[:count].tolist()
        reply = httpx.post(f"{served.url}/predict", json={"pixels": pixels}, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    counts = [*range(1, 13), 12, 7, 3, 9]
    with ThreadPoolExecutor(len(counts)) as pool:
        replies = list(pool.map(predict, counts))
    for count, answers in zip(counts, replies, strict=True):
        assert [answer["label"] for answer in answers] == shape_store.labels[:count].tolist()


# Shared objects only TensorFlow loads (the CPU and the CUDA wheels alike).
TENSORFLOW_OBJECTS = ("libtensorflow", "_pywrap_tensorflow")


def mapped_objects(pid: int) -> set[str]:
    """The files mapped into process `pid`'s memory."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in lines if len(line.split()) >= 6}


def test_the_workers_run_onnxruntime_and_never_load_tensorflow(served) -> None:
    """Each process of a real `bentoml serve` (after it answered) maps onnxruntime's library
    and no TensorFlow shared object."""
    reply = httpx.post(
        f"{served.url}/predict_image", files={"image": image_file(drawing_bytes(1))}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    # /readyz answers once one worker is up: wait (a while) for both to have opened the model.
    deadline = time.monotonic() + 60
    while True:
        maps = {pid: mapped_objects(pid) for pid in [served.pid, *served.workers()]}
        loaded = [pid for pid, objects in maps.items() if any("onnxruntime" in p for p in objects)]
        if len(loaded) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(loaded) >= 2, f"fewer than two processes map onnxruntime: {sorted(maps)}"
    for pid, objects in maps.items():
        tensorflow = [path for path in objects if any(n in path for n in TENSORFLOW_OBJECTS)]
        assert tensorflow == [], f"process {pid} maps {tensorflow[:3]}"


def test_the_workers_serve_http_with_uvloop_and_httptools(served) -> None:
    """uvicorn takes its compiled event loop and HTTP parser when they are installed, and falls
    back to pure Python (a third more CPU per request) without a word when they are not."""
    reply = httpx.get(f"{served.url}/livez", timeout=30)
    assert reply.status_code == 200, reply.text
    workers = served.workers()
    assert workers, "no worker process found"
    for pid in workers:
        objects = mapped_objects(pid)
        for package in ("uvloop", "httptools"):
            assert [path for path in objects if f"/{package}/" in path], f"{pid}: no {package}"


def test_loading_the_service_and_its_model_imports_no_tensorflow_or_keras(shape_store) -> None:
    """What a worker runs (the service module, the model opened and asked once) imports neither
    tensorflow nor keras."""
    script = (
        "import sys\n"
        "from serving import service\n"
        "from serving.model import ServedModel, served_file\n"
        "import bentoml, numpy\n"
        f"stored = bentoml.models.get({shape_store.tag!r})\n"
        "info = dict(stored.info.metadata)\n"
        "model = ServedModel.load(__import__('pathlib').Path(stored.path_of(served_file(info))),"
        " info=info, version='1', threads=1)\n"
        "model.classify(numpy.zeros((2, 28, 28), numpy.float32))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    environment = os.environ | shape_store.environment() | {"PYTHONPATH": str(servers.REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=servers.REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a valid PNG and remembers that it was asked."""

    asked: list[str] = []  # noqa: RUF012 - shared on purpose: the handler is made per request

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        body = drawing_bytes(2, seed=1)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_host() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving a PNG at any path; its URL."""
    _Recorder.asked = []
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{host.server_address[1]}/image.png"
    finally:
        host.shutdown()
        host.server_close()


def test_no_request_makes_the_server_fetch_a_url(served, image_host: str) -> None:
    assert httpx.get(image_host).status_code == 200  # the host works when asked directly
    _Recorder.asked.clear()
    attempts = [
        ("/predict_image", {"files": {"other": image_file(b"x")}, "data": {"image": image_host}}),
        ("/predict_image", {"data": {"image": image_host}}),
        ("/predict_image", {"content": image_host, "headers": {"content-type": "text/uri-list"}}),
        ("/predict_image", {"files": {"image": ("url.txt", image_host.encode(), "text/plain")}}),
        ("/predict_images", {"files": {"other": image_file(b"x")}, "data": {"images": image_host}}),
        ("/predict", {"json": {"pixels": image_host}}),
        ("/v2/models/shapes/infer", {"json": {"inputs": [{"name": "images", "data": image_host}]}}),
    ]
    for path, arguments in attempts:
        response = httpx.post(served.url + path, timeout=30, **arguments)
        assert 400 <= response.status_code < 500, (path, response.text)
    time.sleep(0.5)
    assert _Recorder.asked == []


def _wait_for_exit(server: servers.Server, timeout: float) -> float:
    start = time.monotonic()
    try:
        server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bentoml serve still runs after {timeout:.0f} s:\n{server.tail()}")
    return time.monotonic() - start


def test_serve_exits_failing_when_the_model_is_not_in_the_store(shape_store, tmp_path) -> None:
    environment = shape_store.environment(BENTO_MODEL="shapes:missing")
    with servers.bentoml_serve(environment, log=tmp_path / "serve.log") as server:
        _wait_for_exit(server, 60)
        assert server.process.returncode != 0
        assert "shapes:missing" in server.output()


def test_serve_exits_failing_when_the_model_cannot_be_loaded(tmp_path: Path) -> None:
    # Three class names for five outputs: the service refuses the model in its __init__, which
    # BentoML would otherwise retry forever while /readyz never answers.
    home = tmp_path / "bentoml"
    with bento.bentoml_home(home):
        bento.store_model(
            shapes.tiny_model(len(shapes.SHAPES)), "shapes:broken", class_names=shapes.SHAPES[:3]
        )
    environment = {"BENTOML_HOME": str(home), "BENTO_MODEL": "shapes:broken"}
    with servers.bentoml_serve(environment, log=tmp_path / "serve.log") as server:
        seconds = _wait_for_exit(server, 120)
        print(f"bentoml serve exited after {seconds:.1f} s")
        assert server.process.returncode == 1
        output = server.output()
        assert "the service cannot start: model shapes:broken" in output
        assert "model has 5 outputs but 3 class names" in output


def _hammer(url: str, stop: threading.Event, outcomes: Counter) -> None:
    """Send single images until `stop`; count statuses and connection failures."""
    upload = {"image": image_file(drawing_bytes(3, seed=2))}
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            try:
                outcomes[http.post(f"{url}/predict_image", files=upload).status_code] += 1
            except httpx.TransportError:
                outcomes["cut"] += 1


def test_a_worker_killed_under_load_is_replaced_and_nothing_wedges(shape_store, tmp_path):
    environment = shape_store.environment(SERVING_WORKERS="2")
    with servers.bentoml_serve(environment, log=tmp_path / "serve.log") as server:
        server.wait_ready("/readyz", timeout=120)
        workers = server.workers()
        assert len(workers) >= 2, workers
        stop, outcomes = threading.Event(), Counter()
        threads = [
            threading.Thread(target=_hammer, args=(server.url, stop, outcomes)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        time.sleep(2)
        before = sum(outcomes.values())
        os.kill(workers[-1], signal.SIGKILL)
        time.sleep(8)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a client hung"
        print(f"outcomes: {dict(outcomes)}; {before} before the kill")
        assert outcomes[200] > before > 0
        assert set(outcomes) <= {200, "cut"}, outcomes  # no 5xx, only connections cut
        # A few connections die with the worker; the rest are served by the other one.
        assert outcomes["cut"] <= 8, outcomes
        response = httpx.post(
            f"{server.url}/predict_image",
            files={"image": image_file(drawing_bytes(0, seed=4))},
            timeout=30,
        )
        assert_answer(response.json(), 0)
        assert len(server.workers()) >= 2  # the arbiter started a new worker
    # No access log unless asked for (ACCESS_LOG=1, see the load-shedding test).
    assert "method=POST,path=/predict_image" not in server.output()


def test_load_shedding_answers_503_in_our_words(shape_store, tmp_path: Path) -> None:
    # A 1 ms batching deadline: concurrent batches predicted to wait longer are shed.
    environment = shape_store.environment(
        BATCH_MAX_LATENCY_MS="1", SERVING_WORKERS="1", MAX_BATCH_ITEMS="1024", ACCESS_LOG="1"
    )
    with servers.bentoml_serve(environment, log=tmp_path / "serve.log") as server:
        server.wait_ready("/readyz", timeout=120)
        pixels = np.zeros((1024, 784), np.uint8).tolist()

        def predict(_: int) -> httpx.Response:
            return httpx.post(f"{server.url}/predict", json={"pixels": pixels}, timeout=60)

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(predict, range(48)))
        statuses = Counter(response.status_code for response in responses)
        print(f"statuses: {dict(statuses)}")
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0, "nothing was shed; the test needs more load"
        shed = next(response for response in responses if response.status_code == 503)
        assert_refused(shed, 503, "busy.*retry after 1 s")
        assert shed.headers["retry-after"] == "1"
        # ACCESS_LOG=1: BentoML's access log has a line per request, the shed ones included.
        output = server.output()
        assert "method=POST,path=/predict" in output and "status=503" in output, output[-2000:]
