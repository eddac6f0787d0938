"""A private PostgreSQL cluster for tests: Debian's binaries, its own data folder, stopped by pid.

`initdb` and `postgres` refuse to run as root, so as root they run as the `postgres` user that
Debian's package creates (through `setpriv`, which execs: the pid we hold is the server's own).
The cluster listens on 127.0.0.1 only, on a free port, with its unix socket in its own folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import servers

# Where Debian's `postgresql-<version>` puts its server binaries (not on PATH).
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
# What `make test` does to get them; the team tests say so when they skip.
INSTALL_HINT = (
    "PostgreSQL's server binaries are not installed: `make test` installs Debian's `postgresql`"
    " when it runs as root or with passwordless sudo (`sudo apt-get install postgresql`)"
)
USER = "mlflow"


def binaries() -> Path | None:
    """The newest folder holding `initdb` and `postgres`: Debian's, else the ones on PATH."""
    found = sorted(
        DEBIAN_BINARIES.glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]), reverse=True
    )
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def owner() -> pwd.struct_passwd:
    """The account the cluster runs as: this one, or `postgres` when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root and there is no `postgres` user for PostgreSQL to run as"
            " (Debian's postgresql package creates it)"
        ) from None


def as_owner(command: list[str], account: pwd.struct_passwd) -> list[str]:
    """`command` run as `account` (through setpriv when we are root, as is otherwise)."""
    if os.geteuid() != 0:
        return command
    return [
        "setpriv",
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
        *command,
    ]


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its folder, port, password-protected superuser and server process."""

    root: Path
    port: int
    password: str
    server: servers.Server
    user: str = USER

    def uri(self, database: str) -> str:
        """The SQLAlchemy URI MLflow takes: `postgresql://user:password@127.0.0.1:port/db`."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> str:
        """Create database `name`; its URI."""
        connection = self.connect()
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.uri(name)

    def query(self, database: str, sql: str, *arguments) -> list[tuple]:
        """The rows `sql` returns in `database`."""
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, arguments)
                return cursor.fetchall()
        finally:
            connection.close()


def init_cluster(bin_dir: Path, root: Path, account: pwd.struct_passwd, password: str) -> Path:
    """`initdb` a data folder under `root` whose superuser logs in with `password` only."""
    password_file = root / "password"
    password_file.write_text(password + "\n")
    os.chown(password_file, account.pw_uid, account.pw_gid)
    data = root / "data"
    command = [
        str(bin_dir / "initdb"),
        f"--pgdata={data}",
        f"--username={USER}",
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",
    ]
    result = subprocess.run(as_owner(command, account), capture_output=True, text=True, cwd=root)
    password_file.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return data


def wait_accepting(cluster: Cluster, *, timeout: float) -> None:
    """Until the cluster accepts a login; RuntimeError with its log if it exits or never does."""
    import psycopg

    while True:
        if cluster.server.process.poll() is not None:
            raise RuntimeError(f"postgres exited before it was ready:\n{cluster.server.tail()}")
        try:
            cluster.connect().close()
            return
        except psycopg.OperationalError:
            if time.perf_counter() - cluster.server.started > timeout:
                raise RuntimeError(
                    f"postgres not ready after {timeout:.0f} s:\n{cluster.server.tail()}"
                ) from None
            time.sleep(0.1)


def stop(cluster: Cluster, timeout: float = 30.0) -> None:
    """Fast shutdown (SIGINT: roll back open transactions, then exit), then whatever is left."""
    if cluster.server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(cluster.server.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.server.process.wait(timeout=timeout)
    cluster.server.stop()


@contextlib.contextmanager
def running_cluster(*, timeout: float = 60.0) -> Iterator[Cluster]:
    """A fresh cluster on 127.0.0.1 in a temporary folder, stopped and removed afterwards.

    The folder is made with `tempfile` rather than pytest's (whose parents only root may enter)
    and handed to the account the server runs as.
    """
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError(INSTALL_HINT)
    account = owner()
    root = Path(tempfile.mkdtemp(prefix="team-postgres-"))
    try:
        os.chown(root, account.pw_uid, account.pw_gid)
        password = secrets.token_hex(12)
        data = init_cluster(bin_dir, root, account, password)
        port = servers.free_port()
        command = [
            str(bin_dir / "postgres"),
            f"-D{data}",
            "-h127.0.0.1",
            f"-p{port}",
            f"-k{root}",
            # A throwaway cluster: durability buys nothing and costs seconds of fsync.
            "-cfsync=off",
            "-csynchronous_commit=off",
            "-cfull_page_writes=off",
        ]
        server = servers.start(
            "postgres", as_owner(command, account), port=port, log=root / "server.log", cwd=root
        )
        cluster = Cluster(root=root, port=port, password=password, server=server)
        try:
            wait_accepting(cluster, timeout=timeout)
            yield cluster
        finally:
            stop(cluster)
    finally:
        shutil.rmtree(root, ignore_errors=True)
