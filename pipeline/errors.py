"""User-facing errors: printed as one line by the CLI, exit code 2."""


def error_reason(error: Exception) -> str:
    """FFmpeg's or the OS's words for an error, without the path it repeats."""
    return getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """The first line of an error's message (its type's name when it has none), at most ``limit``
    characters: what a one-line report shows of a library's error."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if limit is None else line[:limit]


def cause_line(error: BaseException) -> str:
    """``Type: first line`` of an error, or of the error it wraps (``error.cause``: an exception
    raised inside a Ray actor arrives wrapped, its message Ray's own text with colour codes)."""
    cause = getattr(error, "cause", None)
    error = cause if isinstance(cause, BaseException) else error
    return f"{type(error).__name__}: {first_line(error)}"


class AnomstreamError(Exception):
    """Bad input (a path, a file, a config key, a camera): the message names the thing."""

    exit_code = 2


class SourceError(AnomstreamError):
    """A source cannot be opened or broke while decoding."""


class LabelFileError(SourceError):
    """A label or mask file is missing, empty, corrupt or in a format this does not read."""


class ConfigError(AnomstreamError):
    """A config file or key is wrong."""


class StoreError(AnomstreamError):
    """An output store exists, is from another run, or cannot be written."""


class UndefinedMetricError(AnomstreamError):
    """A metric has no value for these labels (e.g. AUC when every frame is anomalous)."""
