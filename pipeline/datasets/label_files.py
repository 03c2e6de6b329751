"""Label and mask files as their tools write them, recognised by content, and the one rule for defect pixels.

Formats (the suffix is never trusted): NumPy ``.npy``; MATLAB v4-v7 ``.mat`` (``scipy.io.loadmat``);
MATLAB v7.3 ``.mat`` (HDF5: arrays stored with their axes reversed and cell arrays as object
references; both are undone here, so a v7.3 file reads exactly as the same data saved as v7); and
images Pillow decodes (PNG, BMP, TIFF, ...), read by value: a palette image by its palette index,
never by the colour the index stands for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LabelFileError, first_line

NPY_MAGIC = b"\x93NUMPY"
MAT5_MAGIC = b"MATLAB"  # v5-v7 text header; v7.3 files start with it too but are HDF5 (checked first)
FULL_SCALES = (1, 255, 65535)


def defect_pixels(values: np.ndarray) -> np.ndarray:
    """bool defect pixels of a mask's value array, of the same shape.

    bool values are the answer. Otherwise the full scale is the smallest of 1, 255, 65535 that
    holds the mask's maximum (the maximum itself beyond 65535): when the maximum exceeds half the
    full scale (a brightness-style 0/255 or 0/65535 mask, or 0/1), defect = value > half the full
    scale, so anti-aliased edge values split at the middle; else (small label codes such as 1..5
    in a 0..255 range) defect = value > 0. An all-zero mask has no defect pixel.
    """
    values = np.asarray(values)
    if values.dtype == bool:
        return values.copy()
    if values.dtype.kind not in "iuf":
        raise TypeError(f"mask values must be numbers or bool, got {values.dtype}")
    peak = float(values.max(initial=0))
    scale = next((s for s in FULL_SCALES if peak <= s), peak)
    return values > (scale / 2 if peak > scale / 2 else 0)


def read_masks(path: str | Path, variable: str | None = None) -> np.ndarray:
    """bool (frames, H, W) defect masks from one label file.

    ``.npy``: an (H, W) or (frames, H, W) array. ``.mat``: the variable ``variable`` (``None``: the
    file's only variable) as a cell array of (H, W) masks (MATLAB's linear order, e.g. Avenue's
    1 x frames ``volLabel``), an (H, W) array, or an (H, W, frames) array (MATLAB stacks along the
    third axis). An image: one (H, W) mask. Each mask goes through :func:`defect_pixels`.

    Raises :class:`LabelFileError` naming the file when it is missing, empty, corrupt, of an
    unknown format, lacks the variable, or holds no such array.
    """
    path = Path(path)
    values, kind = _read(path, variable)
    if values.dtype == object:
        cells = [np.asarray(cell) for cell in values.ravel(order="F")]
        if not cells or any(c.ndim != 2 for c in cells) or len({c.shape for c in cells}) != 1:
            raise LabelFileError(f"{path}: expected a cell array of equally sized (H, W) masks, got cells of shapes "
                                 f"{sorted({c.shape for c in cells})}")
        return np.stack([defect_pixels(c) for c in cells])
    if values.ndim == 3 and kind.startswith("mat"):
        values = np.moveaxis(values, -1, 0)
    if values.ndim not in (2, 3) or 0 in values.shape:
        raise LabelFileError(f"{path}: expected (H, W) or (frames, H, W) masks, got an array of shape {values.shape}")
    return defect_pixels(values.reshape(-1, *values.shape[-2:]))


def read_mask_file(path: str | Path) -> np.ndarray:
    """bool (H, W) defect mask of a file that holds one mask (an image, or a 2-D .npy / .mat array).

    Raises :class:`LabelFileError` naming the file as :func:`read_masks` does, or when it holds
    several masks.
    """
    masks = read_masks(path)
    if len(masks) != 1:
        raise LabelFileError(f"{path}: holds {len(masks)} masks, expected one")
    return masks[0]


def read_array(path: str | Path, variable: str | None = None) -> np.ndarray:
    """The raw values of a label file (e.g. 0/1 frame labels): the .npy array, the .mat variable
    (``None``: the only one; cells as an object array), or an image's values (palette images: bool
    index != 0; colour images: max over the colour channels). Raises :class:`LabelFileError`."""
    return _read(Path(path), variable)[0]


def load_mat(path: str | Path) -> dict[str, np.ndarray]:
    """Variables of a MATLAB .mat file of any version, as ``scipy.io.loadmat`` gives them (2-D at
    least, MATLAB's axis order, cells as object arrays). Raises :class:`LabelFileError`."""
    path = Path(path)
    kind = _format(path)
    if kind not in ("mat", "mat-v7.3"):
        raise LabelFileError(f"{path}: not a MATLAB .mat file")
    return _load_mat73(path) if kind == "mat-v7.3" else _load_mat5(path)


def _format(path: Path) -> str:
    """'npy', 'mat-v7.3', 'mat' or 'image', from the file's first bytes."""
    try:
        with path.open("rb") as file:
            head = file.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise LabelFileError(f"{path}: no such label/mask file") from None
    except OSError as error:
        raise LabelFileError(f"{path}: cannot open label/mask file ({error.strerror})") from None
    if not head:
        raise LabelFileError(f"{path}: label/mask file is empty (0 bytes)")
    if head.startswith(NPY_MAGIC):
        return "npy"
    import h5py

    if h5py.is_hdf5(path):  # MATLAB v7.3 puts its 512-byte text header before the HDF5 signature
        return "mat-v7.3"
    return "mat" if head.startswith(MAT5_MAGIC) else "image"


def _read(path: Path, variable: str | None) -> tuple[np.ndarray, str]:
    kind = _format(path)
    if kind == "image":
        return _image_values(path), kind
    if kind == "npy":
        try:
            return np.load(path, allow_pickle=False), kind
        except (ValueError, OSError, EOFError) as error:
            raise LabelFileError(f"{path}: corrupt .npy file ({first_line(error, None)})") from None
    variables = _load_mat73(path) if kind == "mat-v7.3" else _load_mat5(path)
    if variable is None and len(variables) == 1:
        return next(iter(variables.values())), kind
    if variable not in variables:
        wanted = f"no variable {variable!r}" if variable else "several variables: name one"
        raise LabelFileError(f"{path}: {wanted} (it holds {', '.join(sorted(variables)) or 'none'})")
    return variables[variable], kind


def _load_mat5(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        contents = loadmat(str(path))
    except Exception as error:  # noqa: BLE001 - scipy raises several kinds for a damaged file
        raise LabelFileError(f"{path}: corrupt MATLAB file ({first_line(error, None)})") from None
    return {k: v for k, v in contents.items() if not k.startswith("__")}


def _load_mat73(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            return {name: _from_hdf5(path, file, node) for name, node in file.items() if not name.startswith("#")}
    except (OSError, KeyError, ValueError) as error:
        raise LabelFileError(f"{path}: corrupt MATLAB v7.3 file ({first_line(error, None)})") from None


def _from_hdf5(path: Path, file, node) -> np.ndarray:
    """One v7.3 variable: axes reversed back to MATLAB's order, cell references dereferenced."""
    import h5py

    if not isinstance(node, h5py.Dataset):
        raise LabelFileError(f"{path}: variable {node.name.lstrip('/')!r} is a MATLAB struct; expected an array or cell")
    if node.attrs.get("MATLAB_empty"):
        return np.empty((0, 0), node.dtype)
    data = node[()]
    if node.dtype == h5py.ref_dtype:
        cells = np.empty(data.shape, object)
        for index in np.ndindex(data.shape):
            cells[index] = _from_hdf5(path, file, file[data[index]])
        return cells.T
    return np.ascontiguousarray(np.asarray(data).T)


def _image_values(path: Path) -> np.ndarray:
    """Value array (H, W) of a mask image: palette -> bool index != 0; colour -> max over the colour
    channels (alpha ignored); grey, 16-bit, 32-bit and float -> the stored values."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "F") and not mode.startswith("I"):
                image, mode = image.convert("RGB"), "RGB"
            values = np.asarray(image)
    except UnidentifiedImageError:
        raise LabelFileError(f"{path}: not a label/mask file this reads "
                             f"(an image Pillow decodes, .npy, or MATLAB .mat)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise LabelFileError(f"{path}: corrupt mask image ({first_line(error, None)})") from None
    if mode in ("P", "PA"):
        return (values[..., 0] if values.ndim == 3 else values) != 0
    if values.ndim == 3:
        return values[..., : 3 if mode.startswith("RGB") else 1].max(axis=-1)
    return values


