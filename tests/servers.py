"""PostgreSQL and Redis servers of the tests' own, on free ports, to stall with SIGSTOP or restart:
the shared ones on 5432 and 6379 are never paused.
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
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within 30s")


class _Server:
    process: subprocess.Popen[bytes] | None = None

    # PostgreSQL serves every connection from a child process, each in a session of its own: a
    # paused server is the postmaster and all of its children paused.

    def _family(self) -> list[int]:
        assert self.process is not None
        family = [self.process.pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    family.append(int(Path(stat).parent.name))
        return family

    def pause(self) -> None:
        for pid in self._family():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in reversed(self._family()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self._stop()

    def _stop(self) -> None:
        assert self.process is not None
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def postgres_binaries() -> Path | None:
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(candidates[-1]).parent if candidates else None


class OwnPostgres(_Server):
    """initdb into a folder of its own, then one postmaster; as the `postgres` user when run as
    root, since PostgreSQL refuses to run as root (and in a folder that user can reach, as a
    test's tmp_path under root's private one is not)."""

    def __init__(self) -> None:
        binaries = postgres_binaries()
        if binaries is None:
            raise FileNotFoundError("no PostgreSQL server binaries (postgres, initdb)")
        self._bin = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="secureig-test-pg-"))
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")

    def _demote(self) -> None:
        if self._user is not None:
            os.setgid(self._user.pw_gid)
            os.setuid(self._user.pw_uid)

    def start(self) -> OwnPostgres:
        data = self.folder / "data"
        log = self.folder / "postgres.log"
        if not data.exists():
            if self._user is not None:
                os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
            done = subprocess.run(
                [str(self._bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                 "--no-sync", "-E", "UTF8"],
                capture_output=True, timeout=120, preexec_fn=self._demote,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')}")
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self._bin / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=self._demote,
                start_new_session=True,
            )  # fmt: skip
        _wait_listening(self.port, self.process, "postgres", log)
        return self

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class OwnRedis(_Server):
    """One redis-server keeping nothing on disk, so a restart starts empty."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("no redis-server binary")
        self._binary = binary
        self.folder = folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "redis.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.folder)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait_listening(self.port, self.process, "redis-server", log)
        return self

    def restart(self) -> None:
        """Stop and start again on the same port: everything it held is gone."""
        self.stop()
        self.start()
