"""Frame folders (one video) and lists of still images (one stream) as sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import SourceError
from ..files import files_fingerprint, list_images, read_image
from .base import Frame, Source


class FrameFolderSource(Source):
    """A folder of frames of one video, in numeric filename order."""

    def __init__(self, folder: Path, stream_id: str | None = None, fps: float = 25.0) -> None:
        self.folder = folder
        self.warnings = []
        self.paths = list_images(folder)
        if not self.paths:
            raise SourceError(f"{folder}: no image files in folder")
        self.stream_id = stream_id or folder.name
        self.frame_count = len(self.paths)
        self.fps = fps
        self.grey = False

    def use_grey(self) -> None:
        self.grey = True

    def describe(self) -> str:
        return str(self.folder)

    def fingerprint(self) -> dict[str, int]:
        return files_fingerprint(self.paths)

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            yield Frame(self.stream_id, index, index / self.fps, read_image(path, self.grey))


class ImageListSource(Source):
    """Still images from a list, as one stream. The frame index is the position in the list, so an
    image that cannot be decoded leaves a gap (it is skipped and named in ``warnings``) and every
    stored frame still names its file through ``items()``."""

    def __init__(self, paths: list[Path], stream_id: str, description: str) -> None:
        if not paths:
            raise SourceError(f"{description}: no images")
        self.paths = paths
        self.stream_id = stream_id
        self.frame_count = len(paths)
        self.fps = 1.0
        self.description = description
        self.warnings = []
        self.grey = False

    def use_grey(self) -> None:
        self.grey = True

    def describe(self) -> str:
        return self.description

    def fingerprint(self) -> dict[str, int]:
        return files_fingerprint(self.paths)

    def items(self) -> list[str]:
        return [str(p) for p in self.paths]

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                image = read_image(path, self.grey)
            except SourceError as error:
                self.warnings.append(f"skipped {error}")
                continue
            yield Frame(self.stream_id, index, float(index), image)


def image_folder_source(folder: Path, stream_id: str | None = None) -> ImageListSource:
    """A folder of independent still images."""
    paths = list_images(folder)
    if not paths:
        raise SourceError(f"{folder}: no image files in folder")
    return ImageListSource(paths, stream_id or folder.name, str(folder))
