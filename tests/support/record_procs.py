"""``edge-node record`` as real processes (tests and bench/record.py), and waiting on the history's rows."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.fleet_procs import stop_process
from tests.support.paths import clean_env

__all__ = ["RecorderProcess", "sqlite_rows", "wait_until"]


class RecorderProcess:
    """One recorder; ``settings`` are EDGE_* variables. Its log goes to ``<workdir>/<name>.log``."""

    def __init__(self, workdir: Path, name: str, settings: dict[str, str]) -> None:
        self.workdir = workdir
        self.name = name
        self.settings = {
            "EDGE_RECORD__NAME": name,
            "EDGE_RECORD__COMMIT_INTERVAL": "0.2",
            "EDGE_RECORD__HEARTBEAT_INTERVAL": "0.5",
            "EDGE_STATE_DIR": str(workdir / "state"),
            **settings,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> RecorderProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_node", "-v", "record"],
                env=clean_env(PYTHONUNBUFFERED="1", **self.settings), cwd=self.workdir, stdout=log, stderr=log,
            )  # fmt: skip
        return self

    def stop(self) -> None:
        """SIGTERM: the recorder commits what it holds and leaves its session to the broker."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(condition: Callable[[], Any], timeout: float, what: str, *logs: RecorderProcess) -> Any:
    """Poll ``condition`` until it returns something true; fail with the recorders' logs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {r.name}:\n{r.log()[-3000:]}" for r in logs)
            raise AssertionError(f"{what} did not happen within {timeout}s\n{tails}")
        time.sleep(0.1)


def sqlite_rows(db: Path, table: str) -> int:
    """Rows of ``table`` in a recorder's SQLite history; 0 before the recorder made (and migrated) it."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        conn.close()
