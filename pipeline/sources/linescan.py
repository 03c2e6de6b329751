"""Line-scan cameras: a stream of single pixel rows, assembled into overlapping 2-D tiles that are
frames like any other (they slot in before the window step).

``linescan:SPEC?tile=H&stride=S`` reads the rows from any other source: each frame of SPEC is a block
of consecutive rows of one continuous web (how line-scan recordings are usually stored: a video or
a folder of strips), so a live camera or a recording feeds the same assembler.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs

import numpy as np

from ..errors import SourceError
from .base import Frame, Source

SCHEME = "linescan:"


def check_tiling(tile_height: int, stride: int) -> None:
    if not 0 < stride <= tile_height:
        raise ValueError(f"line-scan stride must be in 1..tile ({tile_height}), got {stride}")


def assemble_tiles(rows: Iterator[Frame], tile_height: int, stride: int) -> Iterator[Frame]:
    """Line-scan rows (each a (1, W, 3) image) -> overlapping (tile_height, W, 3) tiles every ``stride`` rows.

    Tile k covers rows [k*stride, k*stride + tile_height); its timestamp is that of its last row.
    """
    check_tiling(tile_height, stride)
    buffer: list[np.ndarray] = []
    tile_index = 0
    for row in rows:
        buffer.append(row.image.reshape(-1, *row.image.shape[-2:])[0])
        if len(buffer) == tile_height:
            yield Frame(row.stream_id, tile_index, row.timestamp, np.stack(buffer))
            tile_index += 1
            buffer = buffer[stride:]


class LineScanSource(Source):
    """Tiles of the rows of ``rows_source``'s frames, taken top to bottom, frame after frame."""

    def __init__(self, rows_source: Source, tile_height: int, stride: int) -> None:
        try:
            check_tiling(tile_height, stride)
        except ValueError as error:
            raise SourceError(f"{rows_source.describe()}: {error}") from None
        self.rows_source = rows_source
        self.stream_id = rows_source.stream_id
        self.tile_height, self.stride = tile_height, stride
        self.is_live = rows_source.is_live
        self.warnings = rows_source.warnings

    def fingerprint(self) -> dict[str, int] | None:
        return self.rows_source.fingerprint()

    def describe(self) -> str:
        return f"{SCHEME}{self.rows_source.describe()}?tile={self.tile_height}&stride={self.stride}"

    def rows(self) -> Iterator[Frame]:
        """Single rows; a block's rows were acquired one after another within its frame interval."""
        row_index = 0
        for frame in self.rows_source.frames():
            row_interval = 1.0 / (self.rows_source.fps * len(frame.image)) if self.rows_source.fps else 0.0
            for offset, row in enumerate(frame.image):
                yield Frame(self.stream_id, row_index, frame.timestamp + offset * row_interval, row[None])
                row_index += 1

    def frames(self) -> Iterator[Frame]:
        return assemble_tiles(self.rows(), self.tile_height, self.stride)


def linescan_sources(spec: str, open_inner) -> list[LineScanSource]:
    """``linescan:INNER?tile=H&stride=S`` -> one line-scan source per stream of INNER (``open_inner``
    resolves INNER; stride defaults to half the tile)."""
    inner, _, query = spec[len(SCHEME):].rpartition("?") if "?" in spec else (spec[len(SCHEME):], "", "")
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    unknown = set(options) - {"tile", "stride"}
    if unknown or "tile" not in options:
        raise SourceError(f"{spec}: a line-scan source needs ?tile=H[&stride=S] (got {query or 'no options'})")
    try:
        tile = int(options["tile"])
        stride = int(options.get("stride", max(1, tile // 2)))
    except ValueError:
        raise SourceError(f"{spec}: tile and stride must be integers") from None
    return [LineScanSource(source, tile, stride) for source in open_inner(inner)]
