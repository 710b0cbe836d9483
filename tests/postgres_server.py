"""A throwaway PostgreSQL server for the tests: a fresh cluster in a temporary folder,
listening on 127.0.0.1 at a free port, trust authentication, no Unix socket.

The binaries (``initdb``, ``postgres``) are looked up on PATH, then in Debian's
``/usr/lib/postgresql/<version>/bin`` (the newest); :func:`find_binaries` returns
``None`` when there are none (the tests that need a server skip, saying so). ``initdb``
refuses to run as root: as root (as on CI), the cluster's folder is given to the
``postgres`` system user that Debian's package makes, and the server runs as that user
(``subprocess``'s ``user=``).

The server is a child process of the test session (not daemonized by ``pg_ctl``): it is
stopped (SIGINT, PostgreSQL's fast shutdown) and waited for by :meth:`Server.stop`, and
its folder removed. Durability is off (``fsync=off``): a crash of the *server* is not
what the tests simulate; the client processes are the ones killed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MISSING = (
    "PostgreSQL's server binaries (initdb, postgres) are not on PATH nor in "
    "/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql) to run "
    "the PostgreSQL checkpoint tests"
)


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or ``None``."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        folder = Path(initdb).resolve().parent
        if (folder / "postgres").exists():
            return folder
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name.split(".")[0] or 0),
    )
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)  # (fast shutdown)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start(binaries: Path) -> Server:
    """A running server (see the module's docstring); raises if it does not start."""
    root = os.geteuid() == 0
    # (As root, in /tmp: the postgres user must reach the folder, and TMPDIR may be a
    # folder of root's.)
    folder = Path(tempfile.mkdtemp(prefix="conveyor-pg-", dir="/tmp" if root else None))
    user = None
    if root:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            raise RuntimeError(
                "running as root, and initdb refuses root: the server must run as the "
                "'postgres' system user (Debian's postgresql package makes it), which is "
                "missing"
            ) from None
        os.chown(folder, account.pw_uid, account.pw_gid)
        user = "postgres"
    data = folder / "data"
    log = folder / "server.log"
    try:
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            user=user,
            cwd=folder,
            check=True,
            capture_output=True,
        )
        port = free_port()
        with open(log, "wb") as out:
            if user is not None:
                os.chown(log, account.pw_uid, account.pw_gid)
            process = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=100",
                ],
                user=user,
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    server = Server(process, folder, port)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            text = log.read_text(errors="replace")
            server.stop()
            raise RuntimeError(f"the PostgreSQL server exited at its start:\n{text}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            if _accepts(server):
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("the PostgreSQL server did not start in 60 s")
        time.sleep(0.05)


def _accepts(server: Server) -> bool:
    """Whether the server accepts a query (it listens a moment before it is ready)."""
    import asyncio

    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(server.url, timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())
