"""Following the registry, the parts without a server: the worker's poll and checks
(`serving.follow`), and the sidecar's tag file and webhook signatures (`serving.tools.follow`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving import follow
from serving.tools import follow as sidecar

SECRET = "s3cret"
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "data": {"name": "clf", "alias": "champion", "version": "3"},
    }
).encode()


def model(version: str, classes=("a", "b"), contract="28x28 grey"):
    """What `Follower` and `check` read of a ServedModel."""
    return SimpleNamespace(
        version=version, name="clf", class_names=classes, info={"input_contract": contract}
    )


class Worker:
    """A worker's served slot, and the candidates its store would load."""

    def __init__(self, pointer: Path, candidates: dict) -> None:
        self.served = follow.Served(model("1"), "clf:v1", 0.0)
        self.candidates = candidates
        self.follower = follow.Follower(
            pointer, interval=0.1, get=lambda: self.served, put=self.put, load=self.load
        )
        self.loads = 0

    def put(self, served: follow.Served) -> None:
        self.served = served

    def load(self, tag: str):
        self.loads += 1
        candidate = self.candidates[tag]
        if isinstance(candidate, Exception):
            raise candidate
        return candidate


def test_the_worker_swaps_in_a_new_tag_once(tmp_path: Path):
    pointer = tmp_path / "tag"
    pointer.write_text("clf:v1\n")
    worker = Worker(pointer, {"clf:v2": model("2")})
    assert not worker.follower.poll() and worker.loads == 0
    pointer.write_text("clf:v2\n")
    assert worker.follower.poll()
    assert worker.served.model.version == "2" and worker.served.tag == "clf:v2"
    assert not worker.follower.poll() and worker.loads == 1


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (follow.Refused("sha256", "clf:v2: model.onnx has sha256 ..."), "sha256"),
        (model("2", classes=("a", "b", "c")), "classes"),
        (model("2", contract="32x32 RGB"), "contract"),
    ],
)
def test_a_refused_candidate_leaves_the_served_model_until_the_file_changes(
    tmp_path: Path, candidate, reason
):
    pointer = tmp_path / "tag"
    pointer.write_text("clf:v2\n")
    worker = Worker(pointer, {"clf:v2": candidate})
    before = follow._swaps().labels("2", "refused", reason)._value.get()
    assert not worker.follower.poll()
    assert worker.served.model.version == "1"
    assert follow._swaps().labels("2", "refused", reason)._value.get() == before + 1
    assert not worker.follower.poll() and worker.loads == 1  # not tried again every poll
    os.utime(pointer, (1, 1))  # the file was written again: one more try
    assert not worker.follower.poll() and worker.loads == 2


def test_the_follower_thread_follows_the_file(tmp_path: Path):
    pointer = tmp_path / "tag"
    pointer.write_text("clf:v1\n")
    worker = Worker(pointer, {"clf:v2": model("2")})
    worker.follower.start()
    try:
        sidecar.write_tag(pointer, "clf:v2")
        swapped = threading.Event()
        for _ in range(50):
            if worker.served.model.version == "2":
                swapped.set()
                break
            swapped.wait(0.05)
        assert swapped.is_set()
    finally:
        worker.follower.stop()


def test_the_sidecar_writes_the_tag_only_when_it_changes(tmp_path: Path):
    path = tmp_path / "tag"
    assert sidecar.follow_once(path, lambda: "clf:v1") == "clf:v1"
    assert path.read_text() == "clf:v1\n"
    assert sidecar.follow_once(path, lambda: "clf:v1") is None
    assert sidecar.follow_once(path, lambda: "clf:v2") == "clf:v2"
    assert [p.name for p in tmp_path.iterdir()] == ["tag"]  # no temporary file left


def signed(body: bytes, *, secret: str = SECRET, stamp: str = "1000", delivery: str = "d-1"):
    digest = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256)
    return {
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(digest.digest()).decode(),
    }


def test_a_delivery_signed_with_the_secret_passes():
    assert sidecar.signature_problem(SECRET, signed(BODY), BODY, now=1010) is None


@pytest.mark.parametrize(
    ("headers", "body", "now", "problem"),
    [
        ({}, BODY, 1010, "a signed MLflow webhook delivery is needed"),
        (signed(BODY, secret="other"), BODY, 1010, "the signature does not match"),
        (signed(BODY), BODY.replace(b'"3"', b'"4"'), 1010, "the signature does not match"),
        (signed(BODY), BODY, 1000 + sidecar.MAX_AGE_S + 1, "not within 300 s of now"),
    ],
)
def test_a_delivery_not_signed_with_the_secret_is_refused(headers, body, now, problem):
    found = sidecar.signature_problem(SECRET, headers, body, now=now)
    assert found is not None and problem in found
    assert SECRET not in found


def test_only_the_followed_alias_wakes_the_sidecar():
    assert sidecar.concerns(BODY, registered_model="clf", alias="champion")
    assert not sidecar.concerns(BODY, registered_model="other", alias="champion")
    assert not sidecar.concerns(BODY, registered_model="clf", alias="challenger")
    assert not sidecar.concerns(b"not json", registered_model="clf", alias="champion")
