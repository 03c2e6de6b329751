"""One run per store: a lock beside the store (``STORE.lock``), held by the run's driver.

zarr lets two processes write one array and keeps whichever chunk came last, so two runs on one
store (a second ``score --overwrite`` beside a running one, a cron job started twice) would leave
neither run's streams whole. The driver creates ``STORE.lock`` atomically before it touches the
store (``O_EXCL`` on a filesystem, a conditional put on object storage), refreshes its heartbeat
while the run goes on and removes it at the end. A second run finds it and refuses, in one line
naming the holder. A lock whose holder is gone (its process ended on this machine, or its heartbeat
is older than ``STALE_S``: a driver killed on another machine) is taken over with a warning, so
``kill -9`` then ``--resume`` works. The lock holds no command line (it may carry credentials).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.errors import StoreError, first_line
from pipeline.store.location import holds_objects, is_url

HEARTBEAT_S = 20.0  # the holder rewrites its heartbeat this often
STALE_S = 120.0  # a lock without a heartbeat this long belongs to a run that is gone


def lock_location(out: str | Path) -> str:
    """``STORE.lock`` beside the store (a path, or an object URL beside the store's prefix)."""
    return str(out).rstrip("/") + ".lock"


class StoreLock:
    """The lock of the store ``out`` (a path or an object-store URL); a context manager. Raises
    StoreError (one line) on entry when another live run holds it."""

    def __init__(self, out: str | Path, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> None:
        self.out, self.location = out, lock_location(out)
        self.file = _ObjectFile(self.location) if is_url(str(out)) else _LocalFile(Path(self.location))
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token, self.started = uuid.uuid4().hex, time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if is_url(str(self.out)):
            holds_objects(self.out)  # credentials, endpoint, bucket: their one line first
        if not self.file.create(self._payload()):
            holder = self.file.read()
            if not self._stale(holder):
                raise StoreError(f"{self.out}: another run is writing this store ({_describe(holder)}); wait for it "
                                 f"to end, or remove {self.location} if that run is gone")
            print(f"warning: {self.out}: taking over the lock of a run that is gone ({_describe(holder)})",
                  file=sys.stderr, flush=True)
            self.file.replace(self._payload())
            if (self.file.read() or {}).get("token") != self.token:  # another run took it over first
                raise StoreError(f"{self.out}: another run is writing this store ({_describe(self.file.read())}); "
                                 f"wait for it to end")
        self._thread = threading.Thread(target=self._beat, name="store-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (self.file.read() or {}).get("token") == self.token:
            self.file.delete()

    def _payload(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                "heartbeat": time.time(), "token": self.token}

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (self.file.read() or {}).get("token") == self.token:
                    self.file.replace(self._payload())
            except OSError:  # a full disk or a lost mount: the run's own writes report it
                pass

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        """Whether the run that holds the lock is gone (an unreadable lock is treated as gone)."""
        if holder is None:
            return True
        if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0))):
            return True
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_s


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("started", 0))))
    beat = time.time() - float(holder.get("heartbeat", 0))
    return f"process {holder.get('pid')} on {holder.get('host')}, started {started}, last seen {beat:.0f} s ago"


class _LocalFile:
    """The lock as a file: created with O_EXCL, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, payload: dict[str, Any]) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # as the store's own folder would be
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise StoreError(f"{self.path}: cannot create the store's lock ({error.strerror})") from None
        with os.fdopen(descriptor, "w") as handle:
            json.dump(payload, handle)
        return True

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def replace(self, payload: dict[str, Any]) -> None:
        part = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        part.write_text(json.dumps(payload))
        os.replace(part, self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class _ObjectFile:
    """The lock as an object beside the store's prefix: created by a conditional put (fails when it
    exists), replaced by a plain put."""

    def __init__(self, url: str) -> None:
        from obstore.store import from_url

        parent, self.name = url.rsplit("/", 1)
        self.store = from_url(parent)

    def create(self, payload: dict[str, Any]) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            obstore.put(self.store, self.name, json.dumps(payload).encode(), mode="create")
        except AlreadyExistsError:
            return False
        except Exception as error:  # noqa: BLE001 - credentials, network, a store without conditional puts
            raise StoreError(f"{self.name}: cannot create the store's lock ({first_line(error, 300)})") from None
        return True

    def read(self) -> dict[str, Any] | None:
        import obstore

        try:
            return json.loads(bytes(obstore.get(self.store, self.name).bytes()))
        except Exception:  # noqa: BLE001 - gone, or not JSON
            return None

    def replace(self, payload: dict[str, Any]) -> None:
        import obstore

        obstore.put(self.store, self.name, json.dumps(payload).encode())

    def delete(self) -> None:
        import obstore

        try:
            obstore.delete(self.store, self.name)
        except Exception:  # noqa: BLE001 - already gone
            pass
