"""A real RTSP camera for tests and the live benchmark: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp, plugins good/ugly, python3-gi), run by the system
Python (/usr/bin/python3, where python3-gi lives), on 127.0.0.1 only.

``/usr/bin/python3 tests/rtsp_server.py --port P [--size 320x240] [--fps 10] [--codec h264]
[--paths cam,cam2] [--auth-env NAME]`` serves a live test picture (``videotestsrc``, a moving ball
with the wall-clock time drawn in) at ``rtsp://127.0.0.1:P/PATH`` for each path, one shared live
pipeline per path, and prints ``serving rtsp://127.0.0.1:P/`` once it listens. ``--auth-env NAME``:
Basic auth for the ``user:password`` held in the environment variable NAME (never on its command
line). A hang is SIGSTOP of this process (connections stay open, nothing is sent); a restart is
SIGKILL and a new server on the same port.
"""

from __future__ import annotations

import argparse
import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bframes=0 ! rtph264pay name=pay0 pt=96",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph265pay name=pay0 pt=96",
}


def _launch(width: int, height: int, fps: int, codec: str) -> str:
    source = (f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
              "! clockoverlay time-format=%H:%M:%S ! videoconvert ! video/x-raw,format=I420")
    return f"( {source} ! {ENCODERS[codec].format(gop=fps)} )"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    parser.add_argument("--paths", default="cam")
    parser.add_argument("--auth-env", default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.auth_env:
        user, _, password = os.environ[args.auth_env].partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
    mounts = server.get_mount_points()
    for path in args.paths.split(","):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(_launch(width, height, args.fps, args.codec))
        factory.set_shared(True)
        if args.auth_env:
            permissions = GstRtspServer.RTSPPermissions()
            permissions.add_permission_for_role("viewer", "media.factory.access", True)
            permissions.add_permission_for_role("viewer", "media.factory.construct", True)
            factory.set_permissions(permissions)
        mounts.add_factory(f"/{path}", factory)
    if server.attach(None) == 0:
        print(f"port {args.port}: cannot listen", file=sys.stderr)
        return 1
    print(f"serving rtsp://127.0.0.1:{server.get_bound_port()}/", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
