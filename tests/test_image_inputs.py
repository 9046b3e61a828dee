"""The shared image/volume reader and layout rule (mmoe.inputs.image) and the anomaly and
restoration predict inputs built on it (issue 26 findings 6-8 and the image low items; issue 27
item 4 and issue 32: NIfTI accepted where DICOM is)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmoe.inputs.image import MAX_PIXELS, image_layout, read_dicom_series, read_image, read_volume
from mmoe.tasks.anomaly.io import AnomalyPreprocess, prepare_images
from mmoe.tasks.restoration.io import MAX_PREDICT_PIXELS, RestorationPreprocess, prepare_image

APRE, RPRE = AnomalyPreprocess(image_size=16), RestorationPreprocess()


# ------------------------------------------------------------------------------ file writers
def _png_header_only(path: Path, width: int, height: int, color_type: int = 0) -> None:
    """A PNG that declares ``width`` x ``height`` 8-bit pixels but holds a tiny (truncated) IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _tiff_header_only(path: Path, width: int, height: int) -> None:
    """A little-endian 8-bit greyscale TIFF declaring ``width`` x ``height`` with 16 bytes of data."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, width * height)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags) \
        + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 24) + b"\0" * 16 + ifd)


def _dicom(path: Path, pixels: np.ndarray | None = None, rows: int | None = None, cols: int | None = None,
           position: float = 0.0, instance: int = 1, series: str = "1.2.3",
           rescale: tuple[float, float] | None = None) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.InstanceNumber = series, instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, position]
    a = np.zeros((4, 4), np.uint16) if pixels is None else pixels
    ds.Rows, ds.Columns = rows or a.shape[0], cols or a.shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = a.astype(np.uint16).tobytes()
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------------------ formats and dtypes
def test_16_bit_colour_png_keeps_16_bits(tmp_path: Path) -> None:
    import cv2

    a = (np.random.default_rng(0).random((6, 7, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "x.png"), a[..., ::-1])  # OpenCV writes BGR
    got = read_image(tmp_path / "x.png")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, a)
    # restoration keeps the 16-bit range: the batch is the exact 16-bit values / 65535
    batch, ctx = prepare_image(RPRE, tmp_path / "x.png")
    np.testing.assert_allclose(batch["input"][0, :, :6, :7].permute(1, 2, 0).numpy(), a / 65535, atol=1e-6)
    assert ctx["dtype"] == np.uint16


def test_float_and_int_tiffs_read_as_arrays_not_black(tmp_path: Path) -> None:
    import tifffile

    rng = np.random.default_rng(1)
    f = (rng.random((20, 24)) * 1000).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), f)
    i = rng.integers(-5000, 5000, (20, 24)).astype(np.int32)
    Image.fromarray(i, mode="I").save(tmp_path / "i.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif"), i)
    rgb = rng.random((20, 24, 3)).astype(np.float32)  # PIL cannot open this one at all
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)
    # anomaly: the path gives exactly what the same array gives (was: converted to black RGB)
    for name, array in (("f.tif", f), ("i.tif", i), ("rgb.tif", rgb)):
        from_path = prepare_images(APRE, str(tmp_path / name), None)[0]["image"]
        torch.testing.assert_close(from_path, prepare_images(APRE, array, None)[0]["image"])
        assert float(from_path.std()) > 0.1


def test_corrupt_image_is_a_value_error_naming_the_argument(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"images: cannot read .*x\.png"):
        prepare_images(APRE, str(tmp_path / "x.png"), None)
    (tmp_path / "y.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"image: cannot read .*y\.jpg"):
        read_image(tmp_path / "y.jpg")


# ------------------------------------------------------------------------------ size caps (finding 8)
def test_png_bomb_refused_from_the_header(tmp_path: Path) -> None:
    _png_header_only(tmp_path / "big.png", 12000, 12000)
    assert (tmp_path / "big.png").stat().st_size < 1000
    with pytest.raises(ValueError, match=r"images: .*big\.png.* declares 144000000 pixels.*max_pixels"):
        prepare_images(APRE, str(tmp_path / "big.png"), None)
    with pytest.raises(ValueError, match=r"image: .*144000000 pixels"):
        prepare_image(RPRE, tmp_path / "big.png")
    # beyond PIL's own hard limit: our ValueError, not PIL's DecompressionBombError
    _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ValueError, match=r"image: .*huge\.png.*max_pixels"):
        read_image(tmp_path / "huge.png", max_pixels=10**9)
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(tmp_path / "big.png", max_pixels=100)


def test_dicom_bomb_refused_from_the_header(tmp_path: Path) -> None:
    _dicom(tmp_path / "bomb.dcm", rows=16000, cols=16000)
    with pytest.raises(ValueError, match=r"images: .*bomb\.dcm.* declares 256000000 pixels \(Rows x Columns"):
        prepare_images(APRE, str(tmp_path / "bomb.dcm"), None)


def test_tiff_and_nifti_bombs_refused_from_the_header(tmp_path: Path) -> None:
    import nibabel as nib

    _tiff_header_only(tmp_path / "big.tif", 12000, 12000)
    with pytest.raises(ValueError, match=r"image: .*big\.tif.* 144000000 pixels"):
        read_image(tmp_path / "big.tif")
    header = nib.Nifti1Header()
    header.set_data_shape((10000, 10000, 10))
    header.set_data_dtype(np.uint8)
    (tmp_path / "big.nii").write_bytes(header.binaryblock + b"\0" * 4)  # header only, no voxels
    with pytest.raises(ValueError, match=r"image: .*big\.nii.* 1000000000 pixels"):
        read_image(tmp_path / "big.nii")
    assert MAX_PIXELS == 8192 * 8192


# ------------------------------------------------------------------------------ medical volumes
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_volumes_and_slices(tmp_path: Path, suffix: str) -> None:
    import nibabel as nib

    vol = (np.random.default_rng(2).random((20, 24, 5)) * 3000).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / f"v{suffix}")
    got = read_image(tmp_path / f"v{suffix}")
    assert got.shape == (5, 20, 24, 1)
    for z in range(5):
        np.testing.assert_array_equal(got[z, ..., 0], vol[:, :, z])  # slice z is data[:, :, z]
    batch, ctx = prepare_images(APRE, str(tmp_path / f"v{suffix}"), None)
    assert batch["image"].shape == (5, 3, 16, 16) and ctx["batched"] and ctx["sizes"] == [(20, 24)] * 5
    torch.testing.assert_close(batch["image"][2:3], prepare_images(APRE, vol[:, :, 2], None)[0]["image"])
    nib.save(nib.Nifti1Image(vol[:, :, 0], np.eye(4)), tmp_path / f"s{suffix}")
    np.testing.assert_array_equal(read_image(tmp_path / f"s{suffix}"), vol[:, :, 0])


def test_dicom_series_folder_sorted_by_position(tmp_path: Path) -> None:
    slices = [np.full((4, 5), 100 * k, np.uint16) for k in range(3)]
    for k, name in zip((2, 0, 1), ("a.dcm", "b.dcm", "c.dcm")):  # file names out of order
        _dicom(tmp_path / name, slices[k], position=-2.5 * k, instance=10 - k)
    got = read_dicom_series(tmp_path)
    assert got.shape == (3, 4, 5, 1)
    assert [int(s[0, 0, 0]) for s in got] == [200, 100, 0]  # ascending position along the normal
    batch, ctx = prepare_images(APRE, str(tmp_path), None)
    assert batch["image"].shape[0] == 3 and ctx["sizes"] == [(4, 5)] * 3
    _dicom(tmp_path / "d.dcm", np.zeros((6, 6), np.uint16), series="9.9")
    with pytest.raises(ValueError, match="images: .*mixes slice sizes"):
        prepare_images(APRE, str(tmp_path), None)


def test_read_volume_geometry_and_hounsfield_units(tmp_path: Path) -> None:
    """read_volume: slices plus the way back into the file's own axes (NIfTI [X, Y, Z], DICOM
    [N, H, W] in position order, a 2-D image [H, W]); rescale=True applies RescaleSlope/Intercept."""
    import nibabel as nib

    vol = (np.random.default_rng(3).random((6, 7, 4)) * 1000).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    v = read_volume(tmp_path / "v.nii.gz")
    assert v.is_volume and v.slices.shape == (4, 6, 7, 1) and v.slice_axis == 2
    np.testing.assert_array_equal(v.to_file_axes(v.slices[..., 0]), vol)  # back to [X, Y, Z] exactly
    series = tmp_path / "series"
    series.mkdir()
    raw = [np.full((3, 5), 1000 + 10 * k, np.uint16) for k in range(3)]
    for k in (1, 2, 0):
        _dicom(series / f"s{k}.dcm", raw[k], position=float(k), instance=k + 1, rescale=(2.0, -1024.0))
    stored, hu = read_volume(series), read_volume(series, rescale=True)
    assert stored.slice_axis == 0 and stored.slices.shape == (3, 3, 5, 1)
    assert [int(s[0, 0, 0]) for s in stored.slices] == [1000, 1010, 1020]
    np.testing.assert_allclose(hu.slices[..., 0], 2.0 * stored.slices[..., 0].astype(np.float64) - 1024.0)
    np.testing.assert_allclose(read_image(series / "s1.dcm", rescale=True), 2.0 * raw[1].astype(np.float64) - 1024)
    flat = read_volume(series / "s0.dcm")
    assert not flat.is_volume and flat.to_file_axes(flat.slices[..., 0]).shape == (3, 5)


# ------------------------------------------------------------------------------ one layout rule (finding 6)
@pytest.mark.parametrize("x, match", [
    (np.zeros((3, 64, 64), np.float32), r"looks channels-first"),
    (np.zeros((64, 64, 2), np.uint8), r"C in \(1, 3, 4\)"),
    (torch.zeros(64, 64, 3), r"looks channels-last"),
    (torch.zeros(2, 64, 64, 3), r"looks channels-last"),
    (np.zeros((2, 3, 64, 64), np.float32), r"looks channels-first"),
])
def test_layout_mismatches_refused_by_both_tasks(x, match) -> None:
    with pytest.raises(ValueError, match="images: expected .*" + match):
        prepare_images(APRE, x, None)
    with pytest.raises(ValueError, match="image: expected .*" + match):
        prepare_image(RPRE, x)


def test_numpy_and_torch_read_the_same_image_alike() -> None:
    rng = np.random.default_rng(3)
    hwc = rng.random((20, 24, 3)).astype(np.float32)
    t = torch.from_numpy(hwc).permute(2, 0, 1)
    a, ca = prepare_images(APRE, hwc, None)
    b, cb = prepare_images(APRE, t, None)
    torch.testing.assert_close(a["image"], b["image"])
    assert ca == cb == {"sizes": [(20, 24)], "batched": False, "volume": None}
    # a batch: [N, H, W, C] numpy and [N, C, H, W] torch alike
    a, ca = prepare_images(APRE, np.stack([hwc, hwc[::-1]]), None)
    b, cb = prepare_images(APRE, torch.stack([t, t.flip(1)]), None)
    torch.testing.assert_close(a["image"], b["image"])
    assert ca["batched"] and cb["batched"] and a["image"].shape[0] == 2
    # numpy [5, 64, 3] is one 5 x 64 colour image, as documented (both tasks)
    assert prepare_images(APRE, np.zeros((5, 64, 3), np.uint8), None)[1] == {"sizes": [(5, 64)], "batched": False,
                                                                              "volume": None}
    assert prepare_image(RPRE, np.zeros((5, 64, 3), np.uint8))[1]["size"] == (5, 64)
    # a greyscale stack is [N, H, W, 1]
    batch, ctx = prepare_images(APRE, rng.random((4, 20, 24, 1)), None)
    assert batch["image"].shape[0] == 4 and ctx["sizes"] == [(20, 24)] * 4
    assert image_layout(np.zeros((4, 20, 24, 1)), "x").batched


# ------------------------------------------------------------------------------ anomaly dtypes and arguments
def test_anomaly_colour_dtypes_and_float_range() -> None:
    neg = np.full((8, 8, 3), -5, np.int16)
    with pytest.raises(TypeError, match="images: expected dtype uint8, uint16 or float"):
        prepare_images(APRE, neg, None)
    huge = np.zeros((8, 8), np.float64)
    huge[0, 0], huge[1, 1] = 1.7e308, -1.7e308
    with pytest.raises(ValueError, match=r"images: values in .* exceed the float32 range"):
        prepare_images(APRE, huge, None)
    with pytest.raises(ValueError, match=r"images\[1\]: values .* exceed the float32 range"):
        prepare_images(APRE, [np.zeros((8, 8)), huge], None)
    # greyscale scanner units stay accepted in any integer dtype (percentile mapping)
    ct = np.arange(-1000, 1000, dtype=np.int16).reshape(40, 50)
    mapped = prepare_images(APRE, ct, None)[0]["image"]
    assert float(mapped.min()) < 0.05 and float(mapped.max()) > 0.95


@pytest.mark.parametrize("modality", [1, 2.0, [1], {"ct": 1}])
def test_anomaly_modality_type_is_checked(modality) -> None:
    with pytest.raises(TypeError, match="modality: expected None, a name or a list of names"):
        prepare_images(APRE, np.zeros((8, 8)), modality)


def test_anomaly_list_items_are_single_images() -> None:
    with pytest.raises(ValueError, match=r"images\[0\]: expected one image in a list, got a batch"):
        prepare_images(APRE, [np.zeros((2, 8, 8, 1))], None)


# ------------------------------------------------------------------------------ restoration memory cap
def test_restoration_refuses_images_above_its_pixel_cap() -> None:
    side = int(MAX_PREDICT_PIXELS ** 0.5) + 1
    big = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3))  # no memory behind it
    with pytest.raises(ValueError, match=rf"image: .*{side * side} pixels.*{MAX_PREDICT_PIXELS}"):
        prepare_image(RPRE, big)
    with pytest.raises(ValueError, match="image: .*pixels"):
        prepare_image(RPRE, torch.zeros(1, 1, 1, 1).expand(2, 3, side // 2 + 1, side))
