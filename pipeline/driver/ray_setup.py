"""Joining or starting Ray for a run, and checking a cluster address before Ray's slow retries."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from ..errors import AnomstreamError, error_reason

# a gRPC server (Ray's GCS) answers the HTTP/2 client preface with a SETTINGS frame (RFC 9113, 3.4)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (``auto`` or ``HOST:PORT``), or with None start a quiet local
    Ray instance of this run's own, whatever RAY_ADDRESS says and whichever cluster already runs on
    the machine (once per process).

    Raises AnomstreamError naming the address when it is malformed or no Ray cluster answers there
    (within ~5 s: a port that is closed, or open but not speaking Ray's gRPC)."""
    if ray.is_initialized():
        return
    if not address:  # a Ray of this run's own; a cluster joined keeps its own auth (token) set-up
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Ray runs workers at nice 15: any busy process on the machine would starve the replicas ~30x
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not os.environ.get("ANOMSTREAM_DEBUG"):  # results dropped after a reported error: no Ray tracebacks
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if address:
        _check_reachable(address)
    argv = sys.argv
    # Ray encodes the command line as UTF-8: a file name in another encoding would stop it
    sys.argv = [arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for arg in argv]
    # a cluster on loopback (its nodes started with --node-ip-address 127.0.0.N): the driver is a
    # node of that address too, or it waits for a node at the machine's outward address
    host = _loopback_host(address)
    local = {"_node_ip_address": host} if host else {}
    try:
        with _own_sigterm_handler():
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     **local)
    except (ConnectionError, ValueError) as error:
        raise AnomstreamError(f"--address {address}: cannot join Ray cluster ({str(error).splitlines()[0]})") from None
    finally:
        sys.argv = argv


def _loopback_host(address: str | None) -> str | None:
    """The host of a HOST:PORT address on loopback (127.0.0.0/8, ::1), else None."""
    host = (address or "").rpartition(":")[0].strip("[]")
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def _current_cluster() -> str:
    """The address ``ray start`` left for ``auto`` on this machine ("" if none); a head that died
    leaves it behind, and Ray would try it for minutes."""
    try:
        return (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").read_text().strip()
    except OSError:
        return ""


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Before Ray's own connect, which retries for minutes: HOST:PORT (or, for ``auto``, the
    RAY_ADDRESS it would read) must accept a TCP connection and answer HTTP/2 as a gRPC server
    (Ray's GCS) does. Raises AnomstreamError naming ``address``."""
    target = (os.environ.get("RAY_ADDRESS", "") or _current_cluster()) if address == "auto" else address
    if target.startswith("ray://"):
        raise AnomstreamError(f"--address {address}: Ray Client addresses (ray://) are not supported; "
                              f"give the cluster's GCS address HOST:PORT (default port 6379)")
    host, _, port = target.rpartition(":")
    if not port.isdigit() or not host:
        if address == "auto":
            return  # Ray finds the local cluster itself, and fails fast when there is none
        raise AnomstreamError(f"--address {address}: expected auto or HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            connection.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            reply = connection.recv(9)
    except OSError as error:
        raise AnomstreamError(f"--address {address}: no Ray cluster answers there ({error_reason(error)})") from None
    if os.environ.get("RAY_USE_TLS", "0") in ("0", "") and (len(reply) < 4 or reply[3] != HTTP2_SETTINGS):
        raise AnomstreamError(f"--address {address}: something listens at {target} but it is not a Ray cluster "
                              f"(no gRPC answer)")


@contextmanager
def _own_sigterm_handler() -> Iterator[None]:
    """While ``ray.init`` runs: a SIGTERM handler of Python's already set (a live run's, which asks
    a clean stop: :mod:`pipeline.driver.signals`) stays, instead of the one ray.init sets first
    thing (``sys.exit``), which ended a live run signalled while Ray started with exit status 15
    and Ray's processes left behind. Ray's own private hook; where it is missing, nothing changes."""
    private = getattr(ray, "_private", None)
    utils, constants = getattr(private, "utils", None), getattr(private, "ray_constants", None)
    original = getattr(utils, "set_sigterm_handler", None)
    if original is None or not callable(signal.getsignal(signal.SIGTERM)):  # no handler of Python's to keep
        yield
        return
    # the driver's core worker would also catch SIGTERM in C++ (abseil's failure handler: exit -6)
    failure_handler = getattr(constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    utils.set_sigterm_handler = lambda handler: None
    if failure_handler is not None:
        constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        utils.set_sigterm_handler = original
        if failure_handler is not None:
            constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = failure_handler
