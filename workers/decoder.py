"""Decode actor: owns one source at a time and turns its frames into window batches on request.

Actors are pooled by the driver: when a source ends, the same actor opens the next one, so a
job of many short clips does not pay a process start per clip. A live source is read on a thread
of the actor's own (:class:`pipeline.stream.live.LiveWindows`); a request returns what is ready.

Ray writes each worker's stdout and stderr to its log files (``worker-*.out``/``.err``): the
actor quiets OpenCV's and FFmpeg's logs first thing, since they print the URLs they open, with a
camera's password (:func:`pipeline.sources.camera.quiet_camera_logs`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import ray

from ..pipeline.sources.base import Source, model_frames
from ..pipeline.sources.camera import quiet_camera_logs
from ..pipeline.stream.live import LiveOptions, LiveWindows
from ..pipeline.stream.windows import BatchHeader, EndOfStream, WindowBatch, WindowShape, window_batches
from .priority import raise_priority


@ray.remote
class DecodeActor:
    def __init__(self) -> None:
        quiet_camera_logs()  # before any library opens a camera in this process
        raise_priority()  # the replicas report when this is not allowed (same cause)
        self._live: LiveWindows | None = None

    def ready(self) -> bool:
        return True

    def open(self, source: Source, shape: WindowShape, batch_size: int, skip_before: int = 0,
             live: LiveOptions | None = None) -> None:
        """Decode ``source`` into batches of ``batch_size`` targets for a model of ``shape``, from
        its row ``skip_before`` on (a resume, or a stream decoded again). ``live``: read the source
        as a live stream (its frames as they come, per ``live.policy``)."""
        self.stop()  # a live reader of an earlier stream (ended with an error) stops reading
        self._source = source
        t, size, channels = shape.window_length, shape.image_size, shape.channels
        self._live = LiveWindows(source, t, batch_size, size, channels, live) if live else None
        self._batches = None if live else window_batches(model_frames(source, channels), source.stream_id, t,
                                                         batch_size, size, channels, skip_before)

    @ray.method(num_returns=2)
    def next_batch(self) -> tuple[BatchHeader | EndOfStream, WindowBatch | None]:
        """(what the driver needs to know, the batch itself or None). A live stream with no frame
        ready answers a header of size 0 (with the gaps that ended, if any)."""
        camera = None
        if self._live is None:
            item = next(self._batches)
            gaps = ()
        else:
            item = self._live.next()
            camera = self._live.camera_status(time.time())
            if not isinstance(item, EndOfStream):
                item, gaps = item
                if item is None:
                    return BatchHeader(self._source.stream_id, -1, -1, 0, gaps=gaps, camera=camera), None
        if isinstance(item, EndOfStream):
            if camera is not None and camera.state != "auth_failed":  # the reader may not have said so yet
                camera = replace(camera, state="stopped", since=time.time(), reason=item.error)
            return replace(item, warnings=tuple(self._source.warnings), camera=camera), None
        return replace(item.header(gaps), camera=camera), item


    def stop(self) -> None:
        """A live stream stops reading; the next requests hand out what was read, then its end."""
        if self._live is not None:
            self._live.stop()
