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
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    try:
        subprocess.run(
            [*initdb, "--no-sync", "-E", "UTF8", "--locale=C"],
            user=user,
            cwd=folder,
            check=True,
            capture_output=True,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # (A free port may be taken by another process before the server binds it: then the
    # server exits at its start, saying so, and another port is tried.)
    for attempt in range(3):
        server = _launch(binaries, folder, user)
        try:
            if _ready(server):
                return server
        except BaseException:
            server.stop()
            raise
        text = (folder / "server.log").read_text(errors="replace")
        if attempt == 2 or "could not bind" not in text:
            server.stop()
            raise RuntimeError(f"the PostgreSQL server did not start:\n{text}")
        server.process.wait()
    raise AssertionError("unreachable")


def _launch(binaries: Path, folder: Path, user: str | None) -> Server:
    port = free_port()
    log = folder / "server.log"
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "100",
    }
    options = [f"-c{name}={value}" for name, value in settings.items()]
    with open(log, "wb") as out:
        if user is not None:
            account = pwd.getpwnam(user)
            os.chown(log, account.pw_uid, account.pw_gid)
        process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(folder / "data"), "-p", str(port), *options],
            user=user,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(process, folder, port)


def _ready(server: Server) -> bool:
    """Wait until the server accepts a query (True), or exits (False); 60 s at most."""
    deadline = time.monotonic() + 60
    while server.process.poll() is None:
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", server.port), 0.5):
                pass
            if _accepts(server):
                return True
        if time.monotonic() > deadline:
            raise RuntimeError("the PostgreSQL server did not start in 60 s")
        time.sleep(0.05)
    return False


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
