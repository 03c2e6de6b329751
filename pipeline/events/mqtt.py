"""Delivery of outbox messages to an MQTT broker (paho-mqtt, QoS 1), in the topics Frigate and Home
Assistant users expect:

- ``PREFIX/available``: ``online`` while the run is connected, ``offline`` when it stops or its
  connection is lost (the broker sends the last will); retained;
- ``PREFIX/CAMERA/state``: the camera's state as JSON (``state``, ``since``, ``last_frame``,
  ``reason``), on every change; retained;
- ``PREFIX/CAMERA/events``: an event's ``start`` / ``end`` message (score, threshold, frame numbers
  and capture times) and the scene messages (``scene_misfit``, ...), the webhook's JSON without the
  picture;
- ``PREFIX/CAMERA/snapshot``: the JPEG of an ended event's peak frame with its map; retained.

CAMERA is the stream's name with every character but letters, digits, ``_``, ``-`` and ``.``
replaced by ``_`` (``/``, ``+`` and ``#`` have meanings in topics). A message leaves the outbox when
the broker has acknowledged each of its publications (PUBACK); a message whose answer was lost is
sent again (at least once: consumers deduplicate by ``message_id``).

The broker is ``mqtt://[USER:PASSWORD@]HOST[:PORT][/PREFIX]`` (``mqtts://`` for TLS, port 8883),
or ``@FILE`` holding it, out of sight of ``ps``; the credentials live in this process's memory only.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ..errors import AnomstreamError
from .sending import url_from_file
from .webhook import shown_url

DEFAULT_PREFIX = "anomstream"
MQTT_ERR_AGAIN = -1  # paho: queued, waiting for a connection
KEEPALIVE_S = 30
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class MqttBroker:
    """Where MQTT messages go: ``host``, ``port``, TLS or not, the topic ``prefix``; ``username`` and
    ``password`` (never shown) when the URL had them."""

    host: str
    port: int
    tls: bool = False
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The broker as printed (credentials masked)."""
        who = "***@" if self.username or self.password else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{who}{self.host}:{self.port}/{self.prefix}"


def parse_mqtt(given: str) -> MqttBroker:
    """``--mqtt``'s value (see the module's text). Raises a one-line AnomstreamError naming --mqtt,
    its credentials masked."""
    url = url_from_file("--mqtt", given[1:], "the broker's mqtt:// URL") if given.startswith("@") else given
    shown = shown_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise AnomstreamError(f"--mqtt {shown!r}: not a URL (its port is not a number)") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise AnomstreamError(f"--mqtt {shown!r}: not an mqtt:// or mqtts:// URL (mqtt://HOST[:PORT][/PREFIX])")
    prefix = parts.path.strip("/") or DEFAULT_PREFIX
    if "+" in prefix or "#" in url.rpartition("@")[2] or parts.query:
        raise AnomstreamError(f"--mqtt {shown!r}: the topic prefix cannot hold + or # or a query")
    tls = parts.scheme == "mqtts"
    unquote = urllib.parse.unquote
    return MqttBroker(parts.hostname, port or (8883 if tls else 1883), tls, prefix,
                      unquote(parts.username) if parts.username else None, unquote(parts.password) if parts.password else None)


def topic_name(stream_id: str) -> str:
    """A stream's name as one topic level (``rtsp://cam.local/live`` -> ``rtsp___cam.local_live``)."""
    return _UNSAFE.sub("_", stream_id) or "_"


def check_topics(stream_ids: list[str], broker: MqttBroker) -> None:
    """Raises a one-line AnomstreamError naming --mqtt and both streams when two streams' names give
    one topic (``my cam`` and ``my_cam``: their states and events would mix)."""
    seen: dict[str, str] = {}
    for stream_id in stream_ids:
        topic = topic_name(stream_id)
        if topic in seen and seen[topic] != stream_id:
            raise AnomstreamError(f"--mqtt: streams {seen[topic]!r} and {stream_id!r} share the topic "
                                  f"{broker.prefix}/{topic}; name the cameras apart (--cameras name)")
        seen.setdefault(topic, stream_id)


def wanted(message: dict[str, Any]) -> bool:
    """Whether a recorder's message goes to MQTT: events and camera states (``camera_up`` /
    ``camera_down`` are told by the retained state topic)."""
    return message.get("type") not in ("camera_up", "camera_down")


def publications(prefix: str, message: dict[str, Any]) -> list[tuple[str, bytes, bool]]:
    """``(topic, payload, retain)`` of each publication a message makes (see the module's text)."""
    camera = f"{prefix}/{topic_name(str(message.get('stream_id', '')))}"
    if message.get("type") == "camera_state":
        state = {key: message.get(key) for key in ("state", "since", "last_frame", "reason", "message_id")}
        return [(f"{camera}/state", json.dumps(state).encode(), True)]
    body = {key: value for key, value in message.items() if key != "snapshot_jpeg"}
    published = [(f"{camera}/events", json.dumps(body).encode(), False)]
    if message.get("snapshot_jpeg"):
        published.append((f"{camera}/snapshot", base64.b64decode(message["snapshot_jpeg"]), True))
    return published


class MqttSender:
    """Publishes outbox messages to ``broker`` through one paho-mqtt client (its own network thread,
    reconnecting by itself); ``client_id`` should be unique to the run."""

    kind, article = "MQTT broker", "an"

    def __init__(self, broker: MqttBroker, client_id: str, timeout_s: float = 5.0) -> None:
        import paho.mqtt.client as mqtt

        self.broker, self.timeout_s = broker, timeout_s
        self.available = f"{broker.prefix}/available"
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._in_flight: dict[str, list[Any]] = {}  # message id -> its publications' MQTTMessageInfo, until acknowledged
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if broker.username or broker.password:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set()
        self.client.will_set(self.available, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self._connected.clear()
        self.client.connect_async(broker.host, broker.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    @property
    def shown(self) -> str:
        return f"MQTT broker {self.broker.shown}"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)  # "Not authorized", "Bad user name or password", ...
            return
        self._refusal = None
        client.publish(self.available, "online", qos=1, retain=True)
        self._connected.set()

    def send(self, message: dict[str, Any], body: bytes) -> None:
        """Publish each of the message's publications at QoS 1 and wait for the broker's PUBACKs;
        raises ConnectionError while the broker is not connected, TimeoutError without an answer."""
        if not self._connected.wait(min(self.timeout_s, 1.0)):
            raise ConnectionError(self._refusal or "not connected")
        message_id = message["message_id"]
        infos = self._in_flight.get(message_id)
        if infos is None or any(info.rc not in (0, MQTT_ERR_AGAIN) for info in infos):
            # published once: paho keeps an unacknowledged one and sends it again on reconnecting, in
            # order; publishing it anew would put it behind newer messages (a stale retained state)
            infos = self._in_flight[message_id] = [self.client.publish(topic, payload, qos=1, retain=retain)
                                                   for topic, payload, retain in publications(self.broker.prefix, message)]
        for info in infos:
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise TimeoutError(f"no acknowledgement within {self.timeout_s:g} s")
        del self._in_flight[message_id]

    def cause(self, error: Exception) -> str:
        return f"{self.shown}: {str(error) or type(error).__name__}"

    def close(self) -> None:
        """``offline`` on the availability topic (a clean stop sends no last will), then disconnect."""
        if self._connected.is_set():
            try:
                self.client.publish(self.available, "offline", qos=1, retain=True).wait_for_publish(self.timeout_s)
            except (RuntimeError, ValueError):
                pass  # the connection went meanwhile: the broker sends the will
        self.client.disconnect()
        self.client.loop_stop()
