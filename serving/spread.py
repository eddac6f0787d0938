"""Connections spread over the workers: a worker accepts while it holds no more than the others.

Why. `bentoml serve` binds one listening socket in its arbiter (circus) and every worker's
uvicorn waits on that same socket. Each new connection wakes every idle worker; the first to
call accept() gets it, and it is the same worker again and again: the kernel wakes the waiters
in a fixed order (epoll puts each at the head of the socket's queue), so one worker wins every
race it is idle for (strace on both: its accept4 30-140 us ahead, the other's EAGAIN, 7 times of
8). libuv (under uvloop) already accepts one connection per wake-up, and UV_TCP_SINGLE_ACCEPT
changed nothing. A client that opens its pool at once then often has it all on one worker: in
5 of 20 fresh pools of 8 keep-alive connections one worker used 0.00 s of CPU.

How. Every worker of one server writes how many connections it holds into a slot of a small
shared file (`Board`, named after the arbiter, removed when it exits). Each worker accepts the
listening socket's connections itself, one per turn of its event loop, and hands each to uvicorn
(`loop.connect_accepted_socket` with uvicorn's own protocol factory). A worker that holds more
connections than another worker does not accept: it looks again every millisecond, so the less
busy worker takes the connection, or after `PATIENCE_S` accepts it anyway (the other may be
stuck in a long batch, or dead). Keep-alive pools come out even whatever the scheduler does.
The price: ~70 us more CPU per new connection than uvloop's own listener (docs/performance.md).

Rejected. SO_REUSEPORT with a socket per worker lets the kernel hash connections over the
sockets: 8 connections over 2 workers leave one with at most 1 in 7% of pools (binomial), and
circus binds per-process reuseport sockets only when the watcher's *cmd* names the socket
(BentoML names it in the args). Asyncio's loop, which accepts up to `backlog` connections per
wake-up, would be worse than uvloop, not better.

`install()` puts this in place from `serving.service`: in a worker it wraps uvicorn's
`Server.startup`, which BentoML's worker calls with the shared socket after importing the
service, and starts the worker's figures in /metrics (`serving.worker_figures`) there too.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import logging
import mmap
import os
import select
import socket
import tempfile
from pathlib import Path
from typing import Any

from serving import worker_figures

log = logging.getLogger("bentoml.serving")

SLOTS = 64  # worker indexes 1..64 have a slot; a worker beyond accepts as uvicorn does
PATIENCE_S = 0.02  # longest a pending connection waits for a less busy worker
RECHECK_S = 0.001  # how often a deferring worker looks again
COUNT_BITS = 24  # a slot: pid above, connections + 1 in the low bits
COUNT_MASK = (1 << COUNT_BITS) - 1
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def board_path(arbiter_pid: int) -> Path:
    """The board of the server whose arbiter (the `bentoml serve` process) is `arbiter_pid`."""
    return Path(tempfile.gettempdir()) / f"serving-connections-{arbiter_pid}"


class Board:
    """The connections each worker of one server holds: one 8-byte slot per worker index in a
    shared file, 0 when the worker is not accepting, else its pid and its connections + 1
    (`pid << COUNT_BITS | connections + 1`), so that a worker that died without a word can be
    told from one that holds few connections."""

    def __init__(self, path: Path, worker: int, *, pid: int | None = None) -> None:
        if not 1 <= worker <= SLOTS:
            raise ValueError(f"worker index {worker} is not in 1..{SLOTS}")
        size = SLOTS * 8
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        descriptor = os.open(path, flags, 0o600)
        try:
            status = os.fstat(descriptor)
            if status.st_uid != os.getuid():
                raise PermissionError(f"{path} belongs to another user")
            if status.st_size < size:
                # Workers may race here; growing a file to the same size keeps what was written.
                os.ftruncate(descriptor, size)
            self._map = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._slots = memoryview(self._map).cast("q")
        self._mine = worker - 1
        self._pid = os.getpid() if pid is None else pid
        self.leave()

    def publish(self, connections: int) -> None:
        self._slots[self._mine] = self._pid << COUNT_BITS | min(connections + 1, COUNT_MASK)

    def leave(self) -> None:
        self._slots[self._mine] = 0

    def may_accept(self, connections: int) -> bool:
        """Whether a worker holding `connections` is among the least busy live workers."""
        if connections == 0:
            return True
        for index, value in enumerate(self._slots.tolist()):
            fewer = value and index != self._mine and (value & COUNT_MASK) - 1 < connections
            if fewer and _alive(value >> COUNT_BITS):
                return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # the pid went to another user's process: ours is gone
    return True


class Tally:
    """This worker's connections: uvicorn's open ones plus those accepted and not yet handed
    over; every change goes to the board at once."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.open: set[Any] = set()
        self.pending = 0

    @property
    def count(self) -> int:
        return len(self.open) + self.pending

    def changed(self) -> None:
        self.board.publish(self.count)

    def may_accept(self) -> bool:
        return self.board.may_accept(self.count)


class CountedSet(set):
    """uvicorn's `server_state.connections` (its protocols add and discard themselves), telling
    the tally of each change."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        tally.open = self

    def add(self, item: Any) -> None:
        super().add(item)
        self.tally.changed()

    def discard(self, item: Any) -> None:
        super().discard(item)
        self.tally.changed()


class Acceptor:
    """Accepts a listening socket's connections one per loop turn while `tally` allows, and hands
    each to uvicorn. It stands where uvicorn keeps its servers: `close()`, `wait_closed()`."""

    def __init__(self, loop, sock: socket.socket, protocol_factory, ssl, tally: Tally) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._ssl = ssl
        self._tally = tally
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._reading = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self.sockets = (sock,)

    def start(self) -> Acceptor:
        sock = self._sock
        sock.setblocking(False)
        self._tally.changed()
        self._read(True)
        return self

    def _read(self, wanted: bool) -> None:
        if wanted and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
        elif not wanted and self._reading:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = wanted

    def _on_readable(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        if self._waiting_since is None:
            self._waiting_since = now
        if self._tally.may_accept() or now - self._waiting_since >= PATIENCE_S:
            self._accept_one()
            return
        # A less busy worker should take it: look again shortly, not on every loop turn.
        self._later(RECHECK_S, self._recheck)

    def _recheck(self) -> None:
        if self._closed:
            return
        if not self._poll.poll(0):
            # Another worker took what was waiting.
            self._waiting_since = None
            self._timer = None
            self._read(True)
            return
        self._on_readable()

    def _resume(self) -> None:
        self._timer = None
        if not self._closed:
            self._read(True)

    def _later(self, delay: float, callback) -> None:
        self._read(False)
        self._timer = self._loop.call_later(delay, callback)

    def _accept_one(self) -> None:
        try:
            connection, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            self._waiting_since = None  # another worker was quicker
            self._read(True)
            return
        except OSError as error:
            self._waiting_since = None
            if error.errno not in RESOURCE_ERRORS:
                self._read(True)  # the client gave up before we accepted (ECONNABORTED...)
                return
            # Out of file descriptors or memory: as asyncio does, wait before trying again.
            log.error("accepting a connection failed: %s; trying again in 1 s", error)
            self._later(1.0, self._resume)
            return
        self._waiting_since = None
        self._tally.pending += 1
        self._tally.changed()
        task = self._loop.create_task(self._hand_over(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._read(True)

    async def _hand_over(self, connection: socket.socket) -> None:
        try:
            connection.setblocking(False)
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._loop.connect_accepted_socket(
                self._protocol_factory, connection, ssl=self._ssl
            )
        except asyncio.CancelledError:
            connection.close()
            raise
        except Exception as error:  # the client went away before it was served, say
            connection.close()
            log.debug("a connection closed before it was handed over: %s", error)
        finally:
            self._tally.pending -= 1
            self._tally.changed()

    def close(self) -> None:
        """Stop accepting; the connections accepted so far are uvicorn's to finish."""
        if self._closed:
            return
        self._closed = True
        self._read(False)
        if self._timer is not None:
            self._timer.cancel()
        self._tally.board.leave()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _accepting_startup(original, *, worker: int, spread: bool):
    """uvicorn's `Server.startup`, with the shared sockets accepted by `Acceptor`s when
    `spread`, and the worker's figures written to /metrics."""

    @functools.wraps(original)
    async def startup(server, sockets=None) -> None:
        loop = asyncio.get_running_loop()
        if sockets and spread:
            board = _open_board(worker)
            if board is not None:
                await _start_accepting(original, server, sockets, loop, Tally(board))
            else:
                await original(server, sockets)
        else:
            await original(server, sockets)
        if server.started:
            worker_figures.start(loop, server.server_state, str(worker))

    startup.spread_installed = True
    return startup


def _open_board(worker: int) -> Board | None:
    try:
        return Board(board_path(os.getppid()), worker)
    except (OSError, ValueError) as error:
        log.warning(
            "connections not spread over the workers (%s): accepting as uvicorn does", error
        )
        return None


async def _start_accepting(original, server, sockets, loop, tally: Tally) -> None:
    """Run uvicorn's startup with `loop.create_server` on a shared socket answered by an
    `Acceptor` that gets uvicorn's own protocol factory."""
    server.server_state.connections = CountedSet(tally)
    shared = {sock.fileno() for sock in sockets}
    create_server = loop.create_server

    async def accepting(protocol_factory, *args, sock=None, ssl=None, **options):
        if sock is None or sock.fileno() not in shared:
            return await create_server(protocol_factory, *args, sock=sock, ssl=ssl, **options)
        return Acceptor(loop, sock, protocol_factory, ssl, tally).start()

    loop.create_server = accepting
    try:
        await original(server, sockets)
    finally:
        del loop.create_server


def install(workers: int) -> None:
    """In a `bentoml serve` worker: wrap uvicorn's startup (connections spread when `workers`
    > 1; the figures in any case). Elsewhere (the arbiter, a test's process): remove this
    server's board when the process exits."""
    from bentoml._internal.context import server_context

    index = server_context.worker_index
    if index is None:
        atexit.register(_remove_board, os.getpid())
        return
    import uvicorn

    if getattr(uvicorn.Server.startup, "spread_installed", False):
        return
    uvicorn.Server.startup = _accepting_startup(
        uvicorn.Server.startup, worker=int(index), spread=workers > 1
    )


def _remove_board(arbiter_pid: int) -> None:
    board_path(arbiter_pid).unlink(missing_ok=True)
