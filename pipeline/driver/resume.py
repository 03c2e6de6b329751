"""What ``--resume`` may do with a stream the store already holds, and a resume with nothing to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import StoreError
from pipeline.sources.base import Source
from pipeline.store.results import StoredStream, check_same_run, open_results, stored_stream


def same_source(stored: str, current: str) -> bool:
    """Whether a stream in the store came from this input (earlier stores kept paths as typed)."""
    return stored == current or Path(stored).absolute() == Path(current)


def resume_refusal(stored: StoredStream | None, source: Source, fingerprint: dict[str, int] | None) -> str | None:
    """Why ``source`` may not continue what the store holds under its stream id (another input, or
    its files changed since: ``fingerprint`` is :meth:`Source.fingerprint` now), or None."""
    if stored is None:
        return None
    if stored.source is not None and not same_source(stored.source, source.describe()):
        return (f"{source.describe()}: the store's stream {source.stream_id!r} was scored from "
                f"{stored.source}; score into another store, or --overwrite")
    if stored.fingerprint is not None and stored.fingerprint != fingerprint:
        return (f"{source.describe()}: changed since the store's stream {source.stream_id!r} was "
                f"scored from it (files, size or modification time differ); score into another "
                f"store, or --overwrite")
    return None


def complete_already(out: str | Path, sources: list[Source], run_attrs: dict[str, Any]) -> dict[str, int] | None:
    """Frames stored per stream when the store at ``out`` holds every one of ``sources`` complete,
    scored from the same, unchanged input by the same model and calibration: a resume with nothing to
    do (no Ray, no actors, the store left as it is). None otherwise, or when ``out`` is no store yet
    (the run goes on as usual). Raises StoreError, as the run would, for a store of another run
    (:func:`check_same_run`)."""
    try:
        root = open_results(out)
    except StoreError:
        return None  # not (yet) one of ours: the writer says what is wrong, as always
    check_same_run(out, root, run_attrs)
    frames: dict[str, int] = {}
    for source in sources:
        stored = stored_stream(root, source.stream_id)
        if stored is None or not stored.complete or resume_refusal(stored, source, source.fingerprint()):
            return None
        frames[source.stream_id] = stored.written
    return frames
