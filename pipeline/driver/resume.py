"""What ``--resume`` may do with a stream the store already holds, and a resume with nothing to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..sources.base import Source
from ..store.results import StoredStream, check_same_run, open_results, stored_stream
from .report import StreamReport


def same_source(stored: str, current: str) -> bool:
    """Whether a stream in the store came from this input: the same text, or the same file by another
    path (relative, through ``..`` or a symlink; earlier stores kept paths as typed)."""
    return stored == current or Path(stored).resolve() == Path(current).resolve()


def resume_refusal(stored: StoredStream | None, source: Source, fingerprint: dict[str, int] | None) -> str | None:
    """Why ``source`` may not continue what the store holds under its stream id (another input, its
    files changed since: ``fingerprint`` is :meth:`Source.fingerprint` now, or the store lost rows
    below the stream's written mark), or None."""
    if stored is None:
        return None
    if stored.source is not None and not same_source(stored.source, source.describe()):
        return (f"{source.describe()}: the store's stream {source.stream_id!r} was scored from "
                f"{stored.source}; score into another store, or --overwrite")
    if stored.fingerprint is not None and stored.fingerprint != fingerprint:
        return (f"{source.describe()}: changed since the store's stream {source.stream_id!r} was "
                f"scored from it (files, size or modification time differ); score into another "
                f"store, or --overwrite")
    return stored.damage  # rows below its written mark are gone: resuming would build on fill values


def nothing_to_resume(out: str | Path, sources: list[Source], run_attrs: dict[str, Any]) -> dict[str, StreamReport] | None:
    """Per stream, what a resume would report when the store at ``out`` leaves nothing to score: each
    of ``sources`` is there complete from the same, unchanged input (skipped), or refused (another input
    or a changed one: the stream's error). Then no run starts (no Ray, no actors) and the store stays as
    it is. None when some stream has frames to score, or ``out`` is no store yet (the run goes on as
    usual). Raises StoreError, as the run would, for a store of another run (:func:`check_same_run`)."""
    try:
        root = open_results(out, check=False)  # each stream is checked below
    except StoreError:
        return None  # not (yet) one of ours: the writer says what is wrong, as always
    check_same_run(out, root, run_attrs)
    reports: dict[str, StreamReport] = {}
    for source in sources:
        stored = stored_stream(root, source.stream_id, out)
        if stored is None:
            return None
        refusal = resume_refusal(stored, source, source.fingerprint())
        if refusal is None and not stored.complete:
            return None
        reports[source.stream_id] = StreamReport(source.describe(), stored=stored.written, error=refusal,
                                                 skipped=refusal is None)
    return reports
