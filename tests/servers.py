"""Loopback servers for tests: a folder served over HTTP, and an MJPEG camera playing a video in real time."""

from __future__ import annotations

import base64
import functools
import getpass
import http.server
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from anomstream.pipeline.sources.camera_server import spawn

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server a test starts later: one below the kernel's
    ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), so that no socket opened in between
    (Ray's workers, the browser, a client) is handed it by the kernel."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 below {low}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a camera client that stops reading (max_frames) breaks the pipe: expected


def serve_folder(folder: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` on 127.0.0.1:``port`` (0: any free port) from a daemon thread; stop it with
    ``server.shutdown()``."""
    server = _QuietServer(("127.0.0.1", port), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class LoopbackCamera:
    """``pipeline.sources.camera_server`` in a process of its own on 127.0.0.1: an MJPEG camera
    playing ``video`` in real time. ``stop()`` kills it by its PID; ``start()`` brings it back on
    the same port."""

    def __init__(self, video: Path, fps: float, *options: str) -> None:
        self.video, self.fps, self.options = video, fps, options
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process, url = spawn(self.video, self.fps, self.port, *self.options)
        self.port = int(url.rsplit(":", 1)[1].strip("/"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


class WebhookReceiver:
    """A loopback webhook on 127.0.0.1 (a daemon thread): answers ``refuse_status`` to the first ``refuse_first``
    POSTs, reads the body of the next ``drop_answer_first`` and closes the connection without an
    answer (the sender cannot know it arrived), then accepts (200). ``received``: the JSON bodies it
    answered 200 or dropped after reading, in arrival order. ``stop()`` shuts it down."""

    def __init__(self, refuse_first: int = 0, drop_answer_first: int = 0, refuse_status: int = 503) -> None:
        self.refuse_left, self.drop_left, self.refuse_status = refuse_first, drop_answer_first, refuse_status
        self.attempts = 0
        self.received: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.attempts += 1
                    if receiver.refuse_left > 0:
                        receiver.refuse_left -= 1
                        self.send_error(receiver.refuse_status)
                        return
                    receiver.received.append(json.loads(body))
                    if receiver.drop_left > 0:
                        receiver.drop_left -= 1
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def unique(self) -> dict[str, dict]:
        """What the receiver keeps after deduplicating by ``message_id``."""
        return {body["message_id"]: body for body in self.received}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HookReceiver:
    """A loopback webhook on 127.0.0.1 (a daemon thread) answering by path as deployed apps do:
    ``answers`` maps a path to (status, Location or None), e.g. a redirect; a path in ``basic`` wants HTTP Basic auth with
    that ``user:password``; any other path accepts a POST (200). ``certificate``: (certificate, key) PEM
    files: it speaks https. ``requests``: each request as a dict (method, path,
    status, body, headers) in arrival order. ``stop()`` shuts it down."""

    def __init__(self, answers: dict[str, tuple[int, str | None]] | None = None, basic: dict[str, str] | None = None,
                 certificate: tuple[Path, Path] | None = None) -> None:
        self.requests: list[dict] = []
        receiver, lock = self, threading.Lock()
        answers, basic = answers or {}, basic or {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                extra = {}
                if self.path in answers:
                    status, location = answers[self.path]
                    extra = {"Location": location} if location is not None else {}
                elif self.path in basic and self.headers.get("Authorization") != _basic(basic[self.path]):
                    status, extra = 401, {"WWW-Authenticate": 'Basic realm="hooks"'}
                else:
                    status = 200 if self.command == "POST" else 405
                with lock:
                    receiver.requests.append({"method": self.command, "path": self.path, "status": status,
                                              "body": body, "headers": dict(self.headers)})
                self.send_response(status)
                for name, value in {**extra, "Content-Length": "0"}.items():
                    self.send_header(name, value)
                self.end_headers()

            do_POST = do_GET = _answer  # noqa: N815 - the http.server hooks' names

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


class LoopbackS3:
    """moto's standalone S3-compatible server in a process of its own on 127.0.0.1 (any free port);
    ``environment``: the variables that point AWS clients (obstore, boto3) at it; ``stop()`` kills
    it by its PID."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on 127.0.0.1:{self.port}") from None
                time.sleep(0.1)

    @property
    def environment(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


class LockedCamera(LoopbackCamera):
    """A :class:`LoopbackCamera` with a password: it answers 401 to a request without HTTP Basic auth
    for ``credentials`` (``user:password``), which it is handed in its environment, never on its
    command line (``ps``)."""

    def __init__(self, video: Path, fps: float, credentials: str, *options: str) -> None:
        self.credentials = credentials
        super().__init__(video, fps, *options)

    def start(self) -> None:
        self.process, url = spawn(self.video, self.fps, self.port, *self.options, credentials=self.credentials)
        self.port = int(url.rsplit(":", 1)[1].strip("/"))


SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi and gst-rtsp-server's bindings live
RTSP_SERVER = REPO / "tests" / "rtsp_server.py"


def rtsp_server_missing() -> str | None:
    """Why a real RTSP server cannot run here (None: it can): the Debian packages of
    tests/rtsp_server.py are not installed (.ci/run installs them)."""
    probe = ("import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, GstRtspServer;"
             "Gst.init(None); assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')")
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{SYSTEM_PYTHON}: {error}"
    if result.returncode:
        return (result.stderr.strip().splitlines() or ["failed"])[-1] + " (apt-get install gstreamer1.0-rtsp " \
            "gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)"
    return None


class RtspCamera:
    """tests/rtsp_server.py (GStreamer's gst-rtsp-server) in a process of its own on 127.0.0.1: a live
    H.264 camera at ``url`` (one per path). ``hang()``/``resume()``: SIGSTOP/SIGCONT (its connections
    stay open, nothing is sent); ``stop()``: SIGKILL by PID; ``start()``: back on the same port.
    ``credentials``: the ``user:password`` it requires (Basic), handed over in its environment."""

    def __init__(self, *options: str, paths: tuple[str, ...] = ("cam",), credentials: str | None = None) -> None:
        self.options, self.paths, self.credentials = options, paths, credentials
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        command = [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--paths", ",".join(self.paths),
                   *self.options]
        environment = {**os.environ, "GST_DEBUG": "0"}
        if self.credentials is not None:
            command += ["--auth-env", "RTSP_SERVER_AUTH"]
            environment["RTSP_SERVER_AUTH"] = self.credentials
        for _ in range(20):  # a restarted server may meet its old port in TIME_WAIT for a moment
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                            env=environment)
            line = self.process.stdout.readline()
            if line.startswith("serving rtsp://127.0.0.1:"):
                self.port = int(line.split()[-1].rsplit(":", 1)[1].strip("/"))
                return
            self.process.wait()
            time.sleep(0.25)
        raise RuntimeError(f"RTSP server did not start: {line.strip() or 'no output'}")

    def url(self, path: str = "cam", login: str = "") -> str:
        return f"rtsp://{login + '@' if login else ''}127.0.0.1:{self.port}/{path}"

    def hang(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


MOSQUITTO = next((path for path in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.path.exists(path)), "mosquitto")


class MosquittoBroker:
    """Debian's mosquitto in a process of its own on 127.0.0.1:``port`` (0: a free one, kept across
    ``stop()``/``start()``); ``credentials``: the ``user:password`` it requires (a password file made
    with mosquitto_passwd), else anonymous. Stopped by its PID."""

    def __init__(self, folder: Path, port: int = 0, credentials: str | None = None, start: bool = True) -> None:
        self.folder, self.credentials = Path(folder), credentials
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        # as root it would become user mosquitto, who cannot read this test's folder: stay who we are
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr", "log_type error",
                 f"user {getpass.getuser()}"]
        if credentials is None:
            lines.append("allow_anonymous true")
        else:
            user, password = credentials.split(":", 1)
            passwords = self.folder / "passwords"
            passwords.touch(mode=0o600)
            subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        self.config = self.folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        if start:
            self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start: {self.process.stderr.read().decode().strip()}") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


class MqttListener:
    """A paho-mqtt client subscribed to ``topic`` on the broker: ``messages`` (topic, payload bytes,
    retained flag) in the order they came."""

    def __init__(self, port: int, topic: str = "anomstream/#") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{os.getpid()}-{time.time_ns()}")
        self.client.on_connect = lambda client, *args: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.messages.append(
            (message.topic, message.payload, bool(message.retain)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the MQTT listener could not subscribe")

    def on(self, topic: str) -> list[bytes]:
        return [payload for name, payload, _ in self.messages if name == topic]

    def wait_for(self, topic: str, count: int = 1, timeout_s: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while len(self.on(topic)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.on(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
