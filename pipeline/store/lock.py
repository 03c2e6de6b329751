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

from ..errors import StoreError, first_line
from .location import holds_objects, is_url

_HELD: set[str] = set()  # tokens of the locks this process holds now
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
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token, self.started = uuid.uuid4().hex, time.time()
        self.file: _LocalFile | _ObjectFile | None = None
        self.lost = threading.Event()  # set when the lock was taken from this run (its heartbeat found another token)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if is_url(str(self.out)):
            holds_objects(self.out)  # scheme, obstore, credentials, endpoint, bucket: their one line first
            self.file = _ObjectFile(self.location)
        else:
            self.file = _LocalFile(Path(self.location))
        if not self.file.create(self._payload()):
            holder = self.file.read()
            if not self._stale(holder):
                raise StoreError(f"{self.out}: another run is writing this store ({_describe(holder)}); wait for it "
                                 f"to end, or remove {self.location} if that run is gone")
            print(f"warning: {self.out}: taking over the lock of a run that is gone ({_describe(holder)})",
                  file=sys.stderr, flush=True)
            if not self.file.take_over(holder, self._payload()):  # another run took it over first
                raise StoreError(f"{self.out}: another run is writing this store ({_describe(self.file.read())}); "
                                 f"wait for it to end")
        _HELD.add(self.token)
        self._thread = threading.Thread(target=self._beat, name="store-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _HELD.discard(self.token)
        if self.file is not None and (self.file.read() or {}).get("token") == self.token:
            self.file.delete()

    def _payload(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "boot": _boot_id(), "pid_namespace": _pid_namespace(),
                "pid": os.getpid(), "started": self.started, "heartbeat": time.time(), "token": self.token}

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (self.file.read() or {}).get("token") != self.token:
                    self.lost.set()  # taken over (this run looked gone): say so at the end, stop beating
                    print(f"warning: {self.out}: another run took this store's lock over; this run's writes may mix "
                          f"with it", file=sys.stderr, flush=True)
                    return
                self.file.replace(self._payload())
            except Exception:  # noqa: BLE001 - a full disk, a lost mount or a network error: try again next beat
                pass

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        """Whether the run that holds the lock is gone. On this machine (same host, boot and pid
        namespace) by its process; elsewhere by its heartbeat. An unreadable lock is gone only when
        it is older than ``stale_s`` (a run may be writing it this instant)."""
        if holder is None:
            return self.file.age() > self.stale_s
        local = (holder.get("host"), holder.get("boot"), holder.get("pid_namespace")) == \
            (socket.gethostname(), _boot_id(), _pid_namespace())
        if local:
            pid = int(holder.get("pid", 0))
            if pid == os.getpid():  # this process: a lock of its own, or of an earlier process with its pid
                return holder.get("token") not in _HELD
            return not _alive(pid)
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_s


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


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
    """The lock as a file: created whole (written to a temporary file, then hard-linked to the lock's
    name, which fails when it exists), replaced atomically, taken over by one run only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, payload: dict[str, Any]) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # as the store's own folder would be
            part = self._part(payload)
        except OSError as error:
            raise StoreError(f"{self.path}: cannot create the store's lock ({error.strerror})") from None
        try:
            os.link(part, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as error:
            raise StoreError(f"{self.path}: cannot create the store's lock ({error.strerror})") from None
        finally:
            part.unlink(missing_ok=True)

    def take_over(self, holder: dict[str, Any] | None, payload: dict[str, Any]) -> bool:
        """Move the gone run's lock aside (one rename wins), then create ours; False: another run won."""
        aside = self.path.with_name(f"{self.path.name}.gone.{payload['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            pass  # another run moved it first: whoever creates next holds it
        else:
            aside.unlink(missing_ok=True)
        return self.create(payload)

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return float("inf")

    def replace(self, payload: dict[str, Any]) -> None:
        os.replace(self._part(payload), self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def _part(self, payload: dict[str, Any]) -> Path:
        part = self.path.with_name(f"{self.path.name}.{payload['token']}.part")
        part.write_text(json.dumps(payload))
        return part


class _ObjectFile:
    """The lock as an object beside the store's prefix: created by a conditional put (fails when it
    exists), replaced by a plain put."""

    def __init__(self, url: str) -> None:
        from obstore.store import from_url

        parent, self.name = url.rsplit("/", 1)
        try:
            self.store = from_url(parent)
        except Exception as error:  # noqa: BLE001 - obstore's configuration errors
            raise StoreError(f"{url}: cannot open the store's lock ({first_line(error, 300)})") from None

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

    def take_over(self, holder: dict[str, Any] | None, payload: dict[str, Any]) -> bool:
        """Replace the gone run's lock only if it is still the object read (a put conditional on its
        e-tag: one run wins); False: another run won."""
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        try:
            e_tag = obstore.head(self.store, self.name).get("e_tag")
            obstore.put(self.store, self.name, json.dumps(payload).encode(),
                        mode={"e_tag": e_tag} if e_tag else "overwrite")
        except NotFoundError:
            return self.create(payload)
        except PreconditionError:
            return False
        return (self.read() or {}).get("token") == payload["token"]

    def age(self) -> float:
        import obstore

        try:
            return time.time() - obstore.head(self.store, self.name)["last_modified"].timestamp()
        except Exception:  # noqa: BLE001 - gone
            return float("inf")

    def replace(self, payload: dict[str, Any]) -> None:
        import obstore

        obstore.put(self.store, self.name, json.dumps(payload).encode())

    def delete(self) -> None:
        import obstore

        try:
            obstore.delete(self.store, self.name)
        except Exception:  # noqa: BLE001 - already gone
            pass
