"""Bearer tokens: with SERVICE_TOKENS (or SERVICE_TOKENS_FILE) set, every route but the open ones
answers only a request carrying `Authorization: Bearer <one of the tokens>`.

Open without a token: BentoML's probes (`/livez`, `/readyz`, `/healthz`) and the OIP health
routes, for load balancers; the pages and the API's description (rows of `serving.endpoints`
marked `open`), which hold no model answers, so the page at /ui can load and ask for the token.
`/metrics` is open unless METRICS_TOKENS (or METRICS_TOKENS_FILE) names tokens of its own, for a
scraper that should not be able to predict. Everything else, unknown paths included, needs a
token. A missing or wrong token is a 401 with a JSON message and a `WWW-Authenticate` header
(RFC 6750), counted in `/metrics`, before anything reads the body. Tokens are compared by their
SHA-256 digests, each against every accepted one, so neither a token's length nor where it
first differs shows in the time of an answer. Tokens are never logged.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving import endpoints, failfast
from serving.errors import ApiError
from serving.settings import Settings

log = logging.getLogger("bentoml.serving")

# Shorter tokens are refused at start: a guessable token is no lock.
MIN_TOKEN_CHARS = 16
MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# BentoML's own probes and metrics, which are not rows of the route table.
PROBES = frozenset({"/livez", "/readyz", "/healthz"})
METRICS = "/metrics"
REALM = 'Bearer realm="classifier"'
# RFC 6750's token characters (b64token), for a message that can tell a malformed header apart.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class Tokens:
    """The accepted tokens, kept as SHA-256 digests; empty accepts every request."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def parse(cls, text: str, *, where: str) -> Tokens:
        """Tokens from `text`: separated by commas, spaces or lines; `#` starts a comment.
        ValueError, naming `where`, for a token too short or with characters a header cannot
        carry."""
        found = []
        for line in text.splitlines():
            for token in re.split(r"[,\s]+", line.split("#", 1)[0]):
                if not token:
                    continue
                if len(token) < MIN_TOKEN_CHARS or not B64TOKEN.fullmatch(token):
                    raise ValueError(
                        f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters of"
                        f" A-Z a-z 0-9 - . _ ~ + / (make one with {MAKE_ONE})"
                    )
                found.append(_digest(token))
        return cls(tuple(found))

    @classmethod
    def load(cls, listed: str, file: str, *, name: str) -> Tokens:
        """The tokens of the setting `name` (listed in it) and of `<name>_FILE`, together."""
        tokens = cls.parse(listed, where=name)
        if file:
            try:
                text = Path(file).read_text()
            except OSError as error:
                raise ValueError(f"{name}_FILE: cannot read {file}: {error.strerror}") from None
            tokens = cls(tokens.digests + cls.parse(text, where=f"{name}_FILE {file}").digests)
        return tokens

    def __bool__(self) -> bool:
        return bool(self.digests)

    def accepts(self, token: str) -> bool:
        """Whether `token` is one of these, in a time that depends on neither."""
        presented = _digest(token)
        matched = 0
        for digest in self.digests:  # no early exit: every digest is compared
            matched |= hmac.compare_digest(presented, digest)
        return bool(matched)

    def refusal(self, authorization: str) -> tuple[str, ApiError] | None:
        """None when the `Authorization` header's value opens the route; otherwise why not
        (`missing` or `invalid`, the counter's label) and the 401."""
        scheme, _, token = authorization.strip().partition(" ")
        if not authorization:
            return _unauthorized(
                "this endpoint needs a token: send the header 'Authorization: Bearer <token>'"
                " (the service's operator gives out tokens)",
                REALM,
            )
        if scheme.lower() != "bearer" or not B64TOKEN.fullmatch(token.strip()):
            return _unauthorized(
                "the Authorization header must read 'Bearer <token>'",
                f'{REALM}, error="invalid_request"',
            )
        if not self.accepts(token.strip()):
            return _unauthorized(
                "the token sent is not one this service accepts: check it, or ask the service's"
                " operator for a new one",
                f'{REALM}, error="invalid_token"',
            )
        return None


class Guard:
    """ASGI middleware: the token check in front of every route (outside `serving.edge`, so a
    request without a token is refused before its body is read). Read when BentoML builds the
    app in each worker; a setting that cannot be used stops the service (serving.failfast)."""

    def __init__(self, app, *, settings: Settings | None = None) -> None:
        self.app = app
        try:
            settings = settings or Settings.from_env()
            self.service = Tokens.load(
                settings.service_tokens, settings.service_tokens_file, name="SERVICE_TOKENS"
            )
            self.metrics = Tokens.load(
                settings.metrics_tokens, settings.metrics_tokens_file, name="METRICS_TOKENS"
            )
        except ValueError as error:
            failfast.stop_server(str(error))
            raise
        hosts = listening_hosts()
        if self.service:
            log.info(
                "asking for one of %d bearer tokens on every route but the probes and pages"
                " (listening on %s)",
                len(self.service.digests),
                ", ".join(hosts) or "an address not known here",
            )
        warn_if_exposed(hosts, protected=bool(self.service))

    def tokens_for(self, path: str) -> Tokens:
        """The tokens that open `path` (empty: open to all)."""
        if path == METRICS:
            return self.metrics
        if path in PROBES or path in endpoints.OPEN or path.startswith(endpoints.OPEN_PREFIXES):
            return Tokens()
        return self.service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            tokens = self.tokens_for(scope["path"])
            refusal = tokens.refusal(_authorization(scope)) if tokens else None
            if refusal is not None:
                reason, error = refusal
                _refused_counter().labels(reason=reason).inc()
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def listening_hosts() -> list[str]:
    """The addresses this process's TCP sockets listen on (a BentoML worker inherits its
    server's), or [] where they cannot be read."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        connections = psutil.Process().net_connections(kind="tcp")
    except (psutil.Error, OSError):  # the warning's input only: none is no reason to fail
        return []
    return sorted({c.laddr.ip for c in connections if c.status == "LISTEN" and c.laddr})


def warn_if_exposed(hosts: list[str], *, protected: bool) -> bool:
    """Log a warning when the service listens beyond this machine and takes no token; say
    whether it did."""
    exposed = [host for host in hosts if not _loopback(host)]
    if protected or not exposed:
        return False
    log.warning(
        "the service listens on %s with no token: anyone who reaches it can use the model and"
        " read what it serves. Set SERVICE_TOKENS_FILE to a file of tokens (make one with %s),"
        " or serve on 127.0.0.1 behind a proxy that checks who calls",
        ", ".join(exposed),
        MAKE_ONE,
    )
    return True


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _unauthorized(message: str, challenge: str) -> tuple[str, ApiError]:
    reason = "missing" if challenge == REALM else "invalid"
    return reason, ApiError(message, 401, {"WWW-Authenticate": challenge})


def _authorization(scope) -> str:
    for key, value in scope.get("headers") or ():
        if key == b"authorization":
            return value.decode("latin-1")
    return ""


@functools.cache
def _refused_counter() -> Any:
    import prometheus_client

    return prometheus_client.Counter(
        "classifier_unauthorized_requests",
        "Requests refused for a missing or wrong bearer token",
        labelnames=("reason",),
    )
