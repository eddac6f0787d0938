"""A two-minute soak (bench/soak.py) against a real `bentoml serve`: mixed good and bad uploads and
batches at a fixed rate give no 5xx, every bad request a 4xx, and bounded worker memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import serve_payloads, soak
from tests.support import servers

pytestmark = pytest.mark.slow


def test_two_minutes_of_mixed_traffic(shape_store, tmp_path: Path) -> None:
    monitor_dir = tmp_path / "monitoring"
    environment = shape_store.environment(SERVING_WORKERS="2", MONITOR_DIR=str(monitor_dir))
    # The shape store's limits allow 16 images per batch (conftest.LIMITS).
    traffic = soak.Traffic(rate=20, bad_fraction=0.2, batch_every=25, batch_size=16)
    images, _, _ = serve_payloads.load_images(tmp_path / "absent.npz", 64)
    with servers.bentoml_serve(environment, log=tmp_path / "serve.log") as server:
        server.wait_ready("/readyz", timeout=120)
        windows = asyncio.run(
            soak.soak(
                server.url,
                server.pid,
                requests=soak.payloads(images, traffic.batch_size),
                traffic=traffic,
                duration_s=120,
                window_s=30,
                monitor_dir=monitor_dir,
                report=print,
            )
        )
        log = server.tail()
    judged = soak.goals(windows)
    assert judged["no_5xx"] and judged["cut"] == 0, (judged, log)
    assert not [window.unexpected for window in windows if window.unexpected], windows
    assert sum(window.status_4xx for window in windows) > 0.1 * 20 * 120
    assert judged["workers_replaced"] == [], judged
    assert len(judged["rss_growth"]) == 2 and judged["bounded_rss"], judged
    # The watch kept recording, and no descriptor piled up.
    assert windows[-1].records_mib > windows[1].records_mib > 0
    assert sum(windows[-1].open_files.values()) <= sum(windows[1].open_files.values()) + 20
