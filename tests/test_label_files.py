"""Label and mask files read by content (MATLAB v5 / v7.3, .npy, images) and masks read by value."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from anomstream.pipeline.datasets.label_files import (
    defect_pixels,
    load_mat,
    read_array,
    read_mask_file,
    read_masks,
)
from anomstream.pipeline.datasets.video_labels import (
    avenue_frame_labels,
    avenue_stream_masks,
    ped2_masks,
)
from anomstream.pipeline.errors import AnomstreamError, LabelFileError

RNG = np.random.default_rng(7)
CELLS = [(RNG.random((5, 7)) < 0.3).astype(np.uint8) for _ in range(3)]  # three (H=5, W=7) 0/1 masks
STACK = RNG.integers(0, 2, (5, 7, 4)).astype(np.uint8)  # MATLAB cat(3, ...): (H, W, frames)


def write_v73(path: Path, cells: list[np.ndarray], stack: np.ndarray) -> None:
    """A .mat file as MATLAB -v7.3 writes it: 512-byte text header, every array with its axes
    reversed, a 1 x N cell as an (N, 1) dataset of references into #refs#."""
    with h5py.File(path, "w", userblock_size=512) as file:
        refs = file.create_group("#refs#")
        targets = []
        for k, cell in enumerate(cells):
            data = refs.create_dataset(f"r{k}", data=cell.T)
            data.attrs["MATLAB_class"] = np.bytes_(b"uint8")
            targets.append(data.ref)
        volume = file.create_dataset("volLabel", data=np.array(targets, dtype=h5py.ref_dtype).reshape(len(cells), 1))
        volume.attrs["MATLAB_class"] = np.bytes_(b"cell")
        file.create_dataset("stack", data=stack.T).attrs["MATLAB_class"] = np.bytes_(b"uint8")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
    with path.open("r+b") as file:
        file.write(header)


def write_v5(path: Path, cells: list[np.ndarray], stack: np.ndarray) -> None:
    volume = np.empty((1, len(cells)), object)
    for k, cell in enumerate(cells):
        volume[0, k] = cell
    savemat(str(path), {"volLabel": volume, "stack": stack})


def test_v73_mat_reads_exactly_as_the_same_data_saved_as_v5(tmp_path):
    v5, v73 = tmp_path / "v5.mat", tmp_path / "labels.dat"  # the suffix says nothing: content decides
    write_v5(v5, CELLS, STACK)
    write_v73(v73, CELLS, STACK)
    old, new = load_mat(v5), load_mat(v73)
    assert sorted(old) == sorted(new) == ["stack", "volLabel"]
    assert old["volLabel"].shape == new["volLabel"].shape == (1, 3)
    for a, b, cell in zip(old["volLabel"].ravel(), new["volLabel"].ravel(), CELLS):
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (5, 7)
        np.testing.assert_array_equal(a, cell)
        np.testing.assert_array_equal(b, cell)
    assert new["stack"].shape == old["stack"].shape == (5, 7, 4)
    np.testing.assert_array_equal(new["stack"], STACK)
    for path in (v5, v73):
        masks = read_masks(path, "volLabel")
        assert masks.dtype == bool and masks.shape == (3, 5, 7)
        np.testing.assert_array_equal(masks, np.stack(CELLS).astype(bool))
        np.testing.assert_array_equal(read_masks(path, "stack"), np.moveaxis(STACK, -1, 0).astype(bool))
    with pytest.raises(LabelFileError, match=r"labels.dat: no variable 'gt' \(it holds stack, volLabel\)$"):
        read_masks(v73, "gt")
    with pytest.raises(LabelFileError, match=r"labels.dat: several variables: name one"):
        read_masks(v73)


def test_avenue_v73_field_file_gives_the_v7_masks(shared_data, field_cases):
    """Case 01: the v7.3 file holds the same 36 masks as the v7 file."""
    v7 = read_masks(shared_data / "avenue" / "testing_label_mask" / "8_label.mat", "volLabel")
    v73 = read_masks(field_cases / "01-avenue-mat-v73" / "testing_label_mask" / "8_label.mat", "volLabel")
    assert v7.shape == v73.shape == (36, 360, 640) and v7.dtype == v73.dtype == bool
    np.testing.assert_array_equal(v73, v7)
    assert int(v7.sum()) > 0


def test_avenue_labels_from_npy_and_mat_files(tmp_path):
    volume = np.zeros((4, 5, 7), np.uint8)
    volume[2:, 1, 1] = 1  # frames 2 and 3 anomalous
    np.save(tmp_path / "3_label.npy", volume)
    write_v73(tmp_path / "12_label.mat", CELLS, STACK)
    labels = avenue_frame_labels(tmp_path)
    assert list(labels) == ["03", "12"]
    np.testing.assert_array_equal(labels["03"], [0, 0, 1, 1])
    np.testing.assert_array_equal(labels["12"], [int(c.any()) for c in CELLS])
    np.testing.assert_array_equal(avenue_stream_masks(tmp_path, "03"), volume.astype(bool))
    with pytest.raises(AnomstreamError, match=r"no label file for stream '05'"):
        avenue_stream_masks(tmp_path, "05")
    np.save(tmp_path / "03_label.npy", volume)
    with pytest.raises(AnomstreamError, match=r"both 03_label.npy and 3_label.npy label video 03"):
        avenue_frame_labels(tmp_path)


def test_npy_masks_and_frame_labels(tmp_path):
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2] = True
    np.save(tmp_path / "one.npy", mask)
    np.testing.assert_array_equal(read_mask_file(tmp_path / "one.npy"), mask)
    np.save(tmp_path / "many.npy", np.stack([mask, mask]).astype(np.uint8) * 255)
    assert read_masks(tmp_path / "many.npy").shape == (2, 5, 7)
    with pytest.raises(LabelFileError, match=r"many.npy: holds 2 masks, expected one$"):
        read_mask_file(tmp_path / "many.npy")
    np.save(tmp_path / "labels.npy", np.array([[0, 1, 1]]))
    np.testing.assert_array_equal(read_array(tmp_path / "labels.npy"), [[0, 1, 1]])


def test_palette_mask_is_read_by_index_not_brightness(tmp_path):
    """Index 0 (background) is white, index 1 (defect) near black: brightness would invert the mask."""
    index = np.zeros((6, 8), np.uint8)
    index[2:4, 3:6] = 1
    image = Image.fromarray(index, mode="P")
    image.putpalette([255, 255, 255, 20, 20, 20])
    image.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask_file(tmp_path / "palette.png"), index == 1)
    brightness = cv2.imread(str(tmp_path / "palette.png"), cv2.IMREAD_GRAYSCALE) > 127
    assert not np.array_equal(brightness, index == 1)  # what reading by brightness gave


EXPECTED = np.array([[0, 0, 1, 1], [0, 1, 1, 0]], bool)


@pytest.mark.parametrize("name, values", [
    ("01.png", EXPECTED.astype(np.uint8)),
    ("0255.png", EXPECTED.astype(np.uint8) * 255),
    ("0255.bmp", EXPECTED.astype(np.uint8) * 255),
    ("16bit-01.png", EXPECTED.astype(np.uint16)),
    ("16bit-065535.png", EXPECTED.astype(np.uint16) * 65535),
    ("16bit-065535.tif", EXPECTED.astype(np.uint16) * 65535),
    ("antialiased.png", np.array([[0, 40, 128, 255], [127, 200, 255, 90]], np.uint8)),
    ("codes.png", np.array([[0, 0, 3, 1], [0, 5, 2, 0]], np.uint8)),
])
def test_grey_masks_by_value(tmp_path, name, values):
    assert cv2.imwrite(str(tmp_path / name), values)
    mask = read_mask_file(tmp_path / name)
    assert mask.dtype == bool and mask.shape == (2, 4)
    np.testing.assert_array_equal(mask, EXPECTED)


def test_rgb_masks_take_the_brightest_colour_channel(tmp_path):
    red = np.zeros((2, 4, 3), np.uint8)
    red[EXPECTED] = (255, 0, 0)
    red[0, 1] = (90, 0, 0)  # an anti-aliased edge of a 0/255 mask: not defect
    Image.fromarray(red).save(tmp_path / "red.png")
    np.testing.assert_array_equal(read_mask_file(tmp_path / "red.png"), EXPECTED)
    blue = np.zeros((2, 4, 4), np.uint8)
    blue[..., 3] = 255  # opaque alpha everywhere: not a colour
    blue[EXPECTED] = (0, 0, 90, 255)  # a dark label colour: defect
    Image.fromarray(blue, mode="RGBA").save(tmp_path / "blue.png")
    np.testing.assert_array_equal(read_mask_file(tmp_path / "blue.png"), EXPECTED)


def test_defect_rule():
    np.testing.assert_array_equal(defect_pixels(np.array([0.0, 0.4, 0.6, 1.0])), [False, False, True, True])
    np.testing.assert_array_equal(defect_pixels(np.array([0, 7, 300, 40000, 65535])), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(defect_pixels(np.array([0, 1, 100])), [0, 1, 1])  # codes in 0..255
    np.testing.assert_array_equal(defect_pixels(np.array([True, False])), [True, False])
    assert not defect_pixels(np.zeros((3, 3), np.uint8)).any()


def test_empty_garbage_and_truncated_mask_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all\n" * 4)
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])  # cut inside the image data
    with pytest.raises(LabelFileError) as empty:
        read_mask_file(tmp_path / "empty.png")
    assert str(empty.value) == f"{tmp_path / 'empty.png'}: label/mask file is empty (0 bytes)"
    with pytest.raises(LabelFileError) as garbage:
        read_mask_file(tmp_path / "garbage.png")
    assert str(garbage.value) == (f"{tmp_path / 'garbage.png'}: not a label/mask file this reads "
                                  f"(an image Pillow decodes, .npy, or MATLAB .mat)")
    with pytest.raises(LabelFileError, match=r"cut.png: corrupt mask image \(.+\)$") as cut:
        read_mask_file(tmp_path / "cut.png")
    with pytest.raises(LabelFileError) as missing:
        read_mask_file(tmp_path / "none.png")
    assert str(missing.value) == f"{tmp_path / 'none.png'}: no such label/mask file"
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file, but the rest is missing")
    with pytest.raises(LabelFileError, match=r"bad.mat: corrupt MATLAB file \(.+\)$"):
        load_mat(tmp_path / "bad.mat")
    for error in (empty, garbage, cut, missing):
        assert "\n" not in str(error.value)


def test_ped2_masks_coded_0_1_and_0_255_agree(field_cases):
    """Case 07: the same Ped2 masks coded 0/1 and 0/255 give the same bool masks, some non-empty."""
    folder = field_cases / "07-ped2-masks-0-1"
    ones, full = list(ped2_masks(folder / "ped2_01", "01")), list(ped2_masks(folder / "ped2_255", "01"))
    assert len(ones) == len(full) == 24
    np.testing.assert_array_equal(np.stack(ones), np.stack(full))
    np.testing.assert_array_equal([m.any() for m in ones], [0] * 10 + [1] * 14)


def test_frame_labels_read_by_value_and_ucsd_clip_names(field_cases, tmp_path):
    from anomstream.pipeline.datasets.video_labels import (
        frame_labels,
        ped2_frame_labels,
        ped2_masks,
    )

    np.testing.assert_array_equal(frame_labels(np.array([0, 255, 255, 0], np.uint8)), [0, 1, 1, 0])
    np.testing.assert_array_equal(frame_labels(np.array([[False, True]])), [0, 1])
    root = tmp_path / "ped2"
    shutil.copytree(field_cases / "07-ped2-masks-0-1" / "ped2_01", root)
    coded = np.load(root / "frame_labels_ped2.npy")
    np.save(root / "frame_labels_ped2.npy", (coded.ravel() != 0).astype(np.uint8) * 255)
    np.testing.assert_array_equal(ped2_frame_labels(root)["01"], coded.ravel() != 0)
    masks = list(ped2_masks(root, "Test001"))  # UCSD's own clip folder name
    assert len(masks) == 24 and [m.any() for m in masks] == list(coded.ravel() != 0)
    (root / "testing" / "gt" / "Test001_gt" / "._000.png").write_bytes(b"AppleDouble")  # macOS metadata
    assert len(list(ped2_masks(root, "01"))) == 24
