"""A replica's batch path (issue 31, item 2): windows built as a view of frames sent once, outputs
back in one copy with the map in float16; the same arrays as the host path (``WindowBatch.windows``
stacked on the host, conversions on the host) bit for bit. The device side of the same path (one
packed copy back) is compared with the CPU in tests/test_devices.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomstream.pipeline.sources.base import Frame, Gap
from anomstream.pipeline.sources.resolve import open_sources
from anomstream.pipeline.store import result_arrays
from anomstream.pipeline.stream.feed import DeviceFeed
from anomstream.pipeline.stream.rows import unscored_rows
from anomstream.pipeline.stream.scorer import Scorer
from anomstream.pipeline.stream.windows import WindowAssembler, WindowBatch, window_batches

CPU = torch.device("cpu")


def _frame(index: int, size: int = 6) -> Frame:
    rng = np.random.default_rng(index)
    return Frame("clip", index, index / 10, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _batches_with_gaps(window_length: int) -> list[WindowBatch]:
    """Batches of 12 targets over 60 frames with gaps after frames 9 and 17 and a damaged frame 25:
    valid targets that are consecutive and that are not, and context carried across batches."""
    assembler = WindowAssembler("clip", window_length, 6, 3)
    batches = []
    for index in range(60):
        if index in (10, 18):
            assembler.note_gap(Gap(index / 10 - 0.05, index / 10, "stall"))
        frame = _frame(index)
        assembler.push(Frame(frame.stream_id, index, frame.timestamp, frame.image, damaged=index == 25))
        if len(assembler.pending) == 12:
            batches.append(assembler.batch(12))
    return batches


@pytest.mark.parametrize("window_length", [1, 2, 5])
def test_windows_on_the_device_are_the_windows_stacked_on_the_host(window_length):
    feed = DeviceFeed(CPU)
    batches = [batch for batch in _batches_with_gaps(window_length) if batch.valid.any()]
    spread = [batch for batch in batches if np.ptp(np.flatnonzero(batch.valid)) >= batch.valid.sum()]
    assert spread and len(spread) < len(batches)  # both the indexed path and the plain slice are taken
    for batch in batches:
        windows = feed.windows(batch)
        assert windows.shape == (batch.valid.sum(), window_length, 3, 6, 6) and windows.dtype == torch.uint8
        np.testing.assert_array_equal(windows.numpy(), batch.windows())


def _host_path(scorer: Scorer, batch: WindowBatch) -> dict[str, np.ndarray]:
    """The replica's arrays as computed before the feed: windows stacked on the host, every output
    copied back on its own and the map halved by numpy."""
    result = unscored_rows(batch, result_arrays((scorer.model.image_size,) * 2, scorer.model.term_names))
    valid = batch.valid
    output = scorer.score_windows(torch.from_numpy(batch.windows()))
    result["score"][valid] = result["score_raw"][valid] = output.score.float().numpy()
    result["map"][valid] = output.anomaly_map.float().numpy().astype(np.float16)
    for name, values in output.terms.items():
        result[f"term_{name}"][valid] = values.float().numpy()
    return result


def test_the_scorer_gives_the_host_paths_arrays_bit_for_bit(shipped_checkpoint, sample_clip):
    """The shipped DMAD (with a calibration's reference maps) over the bundled clip, batches of 8
    with a gap inside one of them."""
    scorer = Scorer(str(shipped_checkpoint), threads=1, device="cpu")
    source = open_sources(str(sample_clip))[0]

    def frames():
        for count, frame in enumerate(source.frames()):
            if count == 20:
                yield Gap(frame.timestamp - 0.01, frame.timestamp, "stall")
            if count == 40:
                return
            yield frame

    model = scorer.model
    items = list(window_batches(frames(), "clip", model.window_length, 8, model.image_size, model.channels))
    batches = [item for item in items if isinstance(item, WindowBatch) and item.valid.any()]
    assert len(batches) == 5 and any(not batch.valid.all() for batch in batches[1:])
    for batch in batches:
        got, expected = scorer.score(batch), _host_path(scorer, batch)
        assert got.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
            assert got[name].dtype == expected[name].dtype, name


def test_the_way_back_is_float32_scores_and_a_float16_map():
    feed = DeviceFeed(CPU)
    score = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    anomaly_map = torch.full((2, 3, 3), 70000.0)  # beyond float16: inf, as numpy's cast gives
    values, half, terms = feed.to_host(score, anomaly_map, [torch.tensor([0.25, 4.0])])
    assert values.dtype == np.float32 and half.dtype == np.float16 and terms[0].dtype == np.float32
    np.testing.assert_array_equal(values, [1.5, -2.0])
    assert np.isinf(half).all() and half.shape == (2, 3, 3)
    np.testing.assert_array_equal(terms[0], [0.25, 4.0])
