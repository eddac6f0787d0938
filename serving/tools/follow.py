"""Keep the service on the registry's alias: package the version it names, point the service at it.

    python -m serving.tools.follow --tag-file .bentoml/serving-tag [--alias champion]
        [--interval 5] [--webhook-port 8765]

Each round resolves the alias (`champion` by default) in MLflow, brings that version into the
BentoML store as `serving.tools.package` does (its ONNX files' sha256 checked against the version's
tags), and, when it is not the one the tag file names, rewrites the file atomically. The service's
workers read that file (`serving.follow`), check the new model and swap it in. `make serve` runs
this beside `bentoml serve`.

It polls every `--interval` seconds. Where the tracking URI is an `mlflow server`, it can also be
told: with `--webhook-port` it listens on 127.0.0.1 for MLflow's registry webhooks
(`model_version_alias.created` / `deleted`), registers one with the server, and checks at once
when the alias moves. A delivery must carry a valid HMAC signature made with the secret in
`MLFLOW_WEBHOOK_SECRET` (and a timestamp less than 5 minutes old); anything else gets 401 and
changes nothing. The secret is never logged. `--once` packages and writes the file, then exits.
With `--optional` (the shadow's follower: `--alias challenger --tag-file .bentoml/shadow-tag`)
an alias that names no version empties the file instead of being an error.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from serving.tools import package

log = logging.getLogger(__name__)
SECRET_VARIABLE = "MLFLOW_WEBHOOK_SECRET"
EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
# A delivery older (or newer) than this is refused: a replayed one cannot move the service.
MAX_AGE_S = 300
MAX_BODY = 64 * 1024


def write_tag(path: Path, tag: str) -> None:
    """Replace the tag file's content in one rename: a worker reads the old tag or the new one."""
    from pipeline import io

    io.write_bytes(path, (tag + "\n").encode())


def named(path: Path) -> str:
    """The tag the tag file names ("" when there is none yet)."""
    return path.read_text().strip() if path.is_file() else ""


def alias_tag(tracking_uri: str, registered_model: str, alias: str) -> str | None:
    """The BentoML tag of the version `alias` names (None: it names none)."""
    import mlflow

    from pipeline.champion import registry

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        version = registry.version_by_alias(client, registered_model, alias)
    except registry.NoSuchVersion:
        return None
    return package.tag_of(registered_model, version)


def follow_once(path: Path, make_tag: Callable[[], str]) -> str | None:
    """Package the version the alias names and point the tag file at it; the new tag, or None
    when the file already names it."""
    tag = make_tag()
    if tag == named(path):
        return None
    write_tag(path, tag)
    if tag:
        log.info("the alias names %s: %s now points the service at it", tag, path)
    else:
        log.info("the alias names no version: %s emptied", path)
    return tag


def signature_problem(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> str | None:
    """Why a webhook delivery is not from the registry (None: it is): MLflow signs
    `<delivery id>.<timestamp>.<body>` with HMAC-SHA256 and sends `v1,<base64>`."""
    delivery = headers.get("X-MLflow-Delivery-Id", "")
    stamp = headers.get("X-MLflow-Timestamp", "")
    signature = headers.get("X-MLflow-Signature", "")
    if not (delivery and stamp and signature):
        return "a signed MLflow webhook delivery is needed (X-MLflow-Signature and its headers)"
    if not stamp.isdigit() or abs((now or time.time()) - int(stamp)) > MAX_AGE_S:
        return f"the delivery's timestamp {stamp!r} is not within {MAX_AGE_S} s of now"
    signed = f"{delivery}.{stamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "the signature does not match: the delivery was not signed with this secret"
    return None


def concerns(body: bytes, *, registered_model: str, alias: str) -> bool:
    """Whether a verified delivery is about `alias` of `registered_model`."""
    try:
        event = json.loads(body)
        data = event["data"]
    except (ValueError, KeyError, TypeError):
        return False
    return (
        event.get("entity") == "model_version_alias"
        and data.get("name") == registered_model
        and data.get("alias") == alias
    )


def receiver(
    secret: str, *, registered_model: str, alias: str, wake: threading.Event
) -> type[BaseHTTPRequestHandler]:
    """The webhook endpoint: 401 for a delivery without a valid signature, 204 otherwise (and
    `wake` set when it is about the followed alias)."""

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > MAX_BODY:
                self._answer(413, f"a delivery is at most {MAX_BODY} bytes")
                return
            body = self.rfile.read(int(length))
            problem = signature_problem(secret, self.headers, body)
            if problem is not None:
                log.warning("webhook refused (401): %s", problem)
                self._answer(401, problem)
                return
            if concerns(body, registered_model=registered_model, alias=alias):
                log.info("webhook: %s moved (%s)", alias, json.loads(body)["data"].get("version"))
                wake.set()
            self._answer(204, None)

        def _answer(self, status: int, error: str | None) -> None:
            payload = b"" if error is None else json.dumps({"error": error}).encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args) -> None:
            log.debug("webhook: " + format, *args)

    return Receiver


def register_webhook(client, url: str, secret: str, registered_model: str):
    """A webhook on the MLflow server that posts alias changes to `url`; it is returned."""
    name = f"follow-{registered_model}-{secrets.token_hex(3)}"
    return client.create_webhook(name=name, url=url, events=list(EVENTS), secret=secret)


def run(args: argparse.Namespace, make_tag: Callable[[], str], wake: threading.Event) -> None:
    """Follow until stopped: a round every `args.interval` seconds, or at once when woken."""
    while True:
        try:
            follow_once(args.tag_file, make_tag)
        except package.PackageError as error:
            log.error("not followed: %s", error)
        wake.wait(args.interval)
        wake.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag-file", type=Path, required=True)
    parser.add_argument("--alias", default=package.ALIAS)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    parser.add_argument("--webhook-port", type=int, help="listen for MLflow registry webhooks")
    parser.add_argument("--once", action="store_true", help="one round, then exit")
    parser.add_argument(
        "--optional",
        action="store_true",
        help="an alias that names no version empties the tag file (a shadow: none now)",
    )
    args = parser.parse_args(argv)
    # Times to the millisecond: how long a round took after the alias moved is read from here.
    logging.basicConfig(level=logging.INFO, format="follow: %(asctime)s %(message)s")
    from pipeline import tracking

    tracking_uri = tracking.tracking_uri()
    registered_model = package.default_registered_model(args.params)

    def make_tag() -> str:
        # A round that finds the alias where it was reads the registry and nothing else.
        current = named(args.tag_file)
        wanted = alias_tag(tracking_uri, registered_model, args.alias)
        if current == wanted:
            return current
        if wanted is None and args.optional:
            return ""  # an empty file: nothing to shadow now
        return package.package(
            registered_model=registered_model, tracking_uri=tracking_uri, alias=args.alias
        )

    if args.once:
        try:
            follow_once(args.tag_file, make_tag)
        except package.PackageError as error:
            raise SystemExit(f"follow: {error}") from None
        print(args.tag_file.read_text().strip())
        return
    wake = threading.Event()
    # `make serve` ends this with SIGTERM: unwind, so the webhook is removed from the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    webhook = None
    try:
        if args.webhook_port is not None:
            webhook = listen(args, tracking_uri, registered_model, wake)
        run(args, make_tag, wake)
    finally:
        if webhook is not None:
            webhook()


def listen(
    args: argparse.Namespace, tracking_uri: str, registered_model: str, wake: threading.Event
) -> Callable[[], None] | None:
    """Start the webhook receiver, and register it with the server the tracking URI names; a
    function that removes it from the server again (None when there is no server)."""
    secret = os.environ.get(SECRET_VARIABLE, "")
    if not secret:
        raise SystemExit(f"follow: --webhook-port needs the webhook secret in {SECRET_VARIABLE}")
    handler = receiver(secret, registered_model=registered_model, alias=args.alias, wake=wake)
    server = ThreadingHTTPServer(("127.0.0.1", args.webhook_port), handler)
    threading.Thread(target=server.serve_forever, name="webhooks", daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/webhook"
    log.info("listening for registry webhooks on %s", url)
    if tracking_uri.startswith(("http://", "https://")):
        import mlflow
        from mlflow.exceptions import MlflowException

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        try:
            webhook = register_webhook(client, url, secret, registered_model)
        except MlflowException as error:
            # Behind basic auth only an admin may register webhooks (docs/team.md#accounts).
            log.warning(
                "the registry refused the webhook (%s): following by polling every %s s",
                str(error).splitlines()[0][:200],
                args.interval,
            )
            return None
        log.info("registered the webhook with %s", tracking_uri)
        return lambda: client.delete_webhook(webhook.webhook_id)
    return None


if __name__ == "__main__":
    main()
