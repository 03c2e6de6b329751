"""A manifest of inputs for a batch job: one source spec per line, or a CSV table with a ``source``
column and an optional ``stream_id`` column (the stream's name in the store)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import AnomstreamError
from ..paths import expand_input


def read_manifest(path: str | Path) -> list[tuple[str, str | None]]:
    """(source spec, stream id or None) per entry, in file order. Blank lines and lines starting
    with ``#`` are skipped. A first line naming a ``source`` column (comma separated) makes it a
    CSV table. ``~`` and ``$VARIABLES`` are expanded (an unset one leaves the line as written: that
    input fails alone). Relative paths are relative to the manifest's folder; URLs and prefixed specs
    (``camera:N``, ``mtd:ROOT``, whose own paths stay relative to the working folder) as written.

    Raises AnomstreamError naming the file (unreadable, not UTF-8, a ``.csv`` without a ``source``
    column, an empty source cell or a stream_id used twice with its line number, no entry at all)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise AnomstreamError(f"--manifest {path}: cannot read ({type(error).__name__}: {error})") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise AnomstreamError(f"--manifest {path}: no sources listed")
    columns = [cell.strip().lower() for cell in next(csv.reader(lines[:1]), [])]
    if "source" in columns and (len(columns) > 1 or not (path.parent / "source").exists()):
        entries = _table(path, "\n".join(lines))
    elif path.suffix.lower() == ".csv":
        raise AnomstreamError(f"--manifest {path}: a CSV manifest needs a 'source' column (its first line names "
                              f"{', '.join(repr(c) for c in columns) or 'no column'})")
    else:
        entries = [(line.strip(), None) for line in lines]
    if not entries:
        raise AnomstreamError(f"--manifest {path}: no sources listed")
    return [(_relative_to(path.parent, spec), stream_id) for spec, stream_id in entries]


def _table(path: Path, text: str) -> list[tuple[str, str | None]]:
    rows = csv.DictReader(io.StringIO(text))
    rows.fieldnames = [name.strip().lower() for name in rows.fieldnames or []]
    entries, named = [], {}
    for row in rows:
        spec, stream_id = (row.get("source") or "").strip(), (row.get("stream_id") or "").strip()
        if not spec and not stream_id:
            continue
        if not spec:
            raise AnomstreamError(f"--manifest {path}: line {rows.line_num}: empty source")
        if stream_id in named:
            raise AnomstreamError(f"--manifest {path}: line {rows.line_num}: stream_id {stream_id!r} is already "
                                  f"used on line {named[stream_id]}")
        if stream_id:
            named[stream_id] = rows.line_num
        entries.append((spec, stream_id or None))
    return entries


def _relative_to(folder: Path, spec: str) -> str:
    """A path relative to the manifest's folder (``~`` and ``$VARIABLES`` expanded as in every path
    option: :func:`pipeline.paths.expand_input`); a spec with a scheme or prefix (``rtsp://``,
    ``camera:0``, ``mtd:ROOT``: a colon before any slash, unless a file of that name is there) or an
    absolute path as written."""
    spec = expand_input(spec, folder)
    if Path(spec).is_absolute() or ":" in spec.split("/", 1)[0] and not (folder / spec).exists():
        return spec
    return str(folder / spec)
