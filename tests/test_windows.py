import numpy as np
import pytest

from anomstream.pipeline.errors import SourceError
from anomstream.pipeline.sources.base import Frame
from anomstream.pipeline.sources.linescan import assemble_tiles
from anomstream.pipeline.stream.windows import EndOfStream, WindowBatch, window_batches


def _frames(n, size=8, fail_after=None):
    for i in range(n):
        if fail_after is not None and i == fail_after:
            raise SourceError(f"clip: broken after frame {i}")
        yield Frame("clip", i, i / 10, np.full((size, size, 3), i, np.uint8))


def _collect(items):
    items = list(items)
    assert isinstance(items[-1], EndOfStream)
    return [b for b in items if isinstance(b, WindowBatch)], items[-1]


def test_windows_hold_previous_frames_across_batches():
    batches, end = _collect(window_batches(_frames(23), "clip", 5, 8, 8, 1))
    assert [b.size for b in batches] == [8, 8, 7] and end.frames == 23 and end.error is None
    targets = np.concatenate([b.frame_index for b in batches])
    np.testing.assert_array_equal(targets, np.arange(23))
    valid = np.concatenate([b.valid for b in batches])
    assert not valid[:4].any() and valid[4:].all()
    for batch in batches:
        windows = batch.windows()
        for window, target in zip(windows, batch.frame_index[batch.valid]):
            np.testing.assert_array_equal(window[:, 0, 0, 0], np.arange(target - 4, target + 1))


def test_source_error_flushes_frames_decoded_before_it():
    batches, end = _collect(window_batches(_frames(50, fail_after=13), "clip", 5, 8, 8, 3))
    assert sum(b.size for b in batches) == 13
    assert end.frames == 13 and "broken after frame 13" in end.error
    assert batches[0].frames.shape[1:] == (3, 8, 8)


def test_skip_before_drops_written_batches_but_keeps_context():
    batches, _ = _collect(window_batches(_frames(20), "clip", 5, 4, 8, 1, skip_before=8))
    assert batches[0].first_frame_index == 8 and batches[0].context == 4
    assert batches[0].valid.all()


def test_skip_before_counts_decoded_frames_not_frame_indices():
    """Resume after 4 rows of a still-image stream whose image 2 could not be decoded: rows 0-3 hold
    frames 0, 1, 3, 4, so scoring continues at frame 5, not at frame 4 (which would be written twice)."""
    frames = [f for f in _frames(10) if f.index != 2]
    batches, _ = _collect(window_batches(iter(frames), "clip", 1, 4, 8, 1, skip_before=4))
    assert [b.frame_index.tolist() for b in batches] == [[5, 6, 7, 8], [9]]
    assert [b.sequence for b in batches] == [1, 2]


def test_line_scan_rows_become_overlapping_tiles():
    rows = (Frame("line", i, float(i), np.full((1, 6, 3), i, np.uint8)) for i in range(20))
    tiles = list(assemble_tiles(rows, tile_height=8, stride=4))
    assert len(tiles) == 4  # rows 0-7, 4-11, 8-15, 12-19
    assert [t.image.shape for t in tiles] == [(8, 6, 3)] * 4
    np.testing.assert_array_equal(tiles[1].image[:, 0, 0], np.arange(4, 12))
    assert [t.index for t in tiles] == [0, 1, 2, 3] and tiles[-1].timestamp == 19.0
    with pytest.raises(ValueError, match=r"line-scan stride must be in 1..tile \(4\), got 5"):
        list(assemble_tiles(iter([]), 4, 5))


def test_a_grey_model_reads_jpeg_frames_as_grey_with_the_very_pixels_of_a_colour_decode(short_clip):
    from itertools import islice

    from anomstream.pipeline.sources.base import model_frames
    from anomstream.pipeline.sources.resolve import open_sources
    from anomstream.pipeline.stream.preprocess import prepare_frame

    colour = list(islice(model_frames(open_sources(str(short_clip))[0], 3), 12))  # an RGB model: as decoded
    grey = list(islice(model_frames(open_sources(str(short_clip))[0], 1), 12))
    part = list(islice(model_frames(open_sources(f"{short_clip}?start_frame=2")[0], 1), 10))  # a part of it too
    assert colour[0].image.shape == (240, 360, 3) and grey[0].image.shape == part[0].image.shape == (240, 360)
    as_grey = np.stack([prepare_frame(frame.image, 128, 1) for frame in colour])  # Ped2's JPEGs: chroma-free
    np.testing.assert_array_equal(np.stack([prepare_frame(frame.image, 128, 1) for frame in grey]), as_grey)
    np.testing.assert_array_equal(np.stack([prepare_frame(frame.image, 128, 1) for frame in part]), as_grey[2:])
    assert prepare_frame(grey[0].image, 128, 3).shape == (3, 128, 128)  # a grey frame for an RGB model: 3 equal planes
