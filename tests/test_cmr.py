"""Cine readers: each format written with its own library (nibabel, pydicom, zipfile, numpy), read with ours."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import MRImageStorage, generate_uid

from ecgflowcmr.errors import InputError
from ecgflowcmr.io import cmr, cmr_readers
from ecgflowcmr.io.cmr import inspect_cine, read_cine, read_mask, write_cine, write_nifti_cine

# ----------------------------------------------------------------------------- synthetic sources


def beating_disc(t: int = 50, h: int = 128, w: int = 120, centre: tuple[float, float] = (40.0, 80.0),
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc whose radius beats once over the cycle (largest at frame 0), on a noisy dark field.

    Returns (frames uint16 (T, H, W), mask uint8 (T, H, W) with label 1 inside the disc).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    frames = np.zeros((t, h, w), np.float32)
    masks = np.zeros((t, h, w), np.uint8)
    for k in range(t):
        radius = 16.0 - 6.0 * np.sin(np.pi * k / t) ** 2
        disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
        frames[k] = 400.0 * disc + 40.0 + 10.0 * rng.random((h, w))
        masks[k] = disc
    return frames.astype(np.uint16), masks


def write_dicom_series(folder: Path, frames: np.ndarray, *, description: str = "CINE_segmented_LAX_4Ch",
                       series_number: int = 1, dt_ms: float = 20.0, skip: tuple[int, ...] = (),
                       spacing: tuple[float, float] = (2.0, 2.0), seed: int = 0) -> list[Path]:
    """One MR image DICOM per frame (pydicom), written in shuffled order with shuffled names."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    order = [k for k in range(len(frames)) if k not in skip]
    random.Random(seed).shuffle(order)
    paths = []
    for i, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"  # explicit VR little endian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = "MR"
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.TriggerTime = k * dt_ms
        ds.CardiacNumberOfImages = len(frames)
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = 8.0
        ds.ImagePositionPatient = [-100.0, -80.0, 20.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
        ds.set_pixel_data(frames[k].astype(np.uint16), "MONOCHROME2", 16)
        path = folder / f"{series_number}_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def expected_canonical(frames: np.ndarray) -> np.ndarray:
    """What read_cine should produce from source frames, computed with the module's own steps."""
    raw = cmr_readers._RawCine(frames.astype(np.float32), (2.0, 2.0), 0.02, np.eye(4))
    return cmr._canonicalize(raw, Path("x"), "nifti", None, cmr.FOV_MM).frames


# ----------------------------------------------------------------------------- NIfTI


def test_nifti_round_trip_matches_canonicalised_input(tmp_path):
    frames, _ = beating_disc()
    write_nifti_cine(tmp_path / "la_4ch.nii.gz", frames, (2.0, 2.0), 0.02)
    cine = read_cine(tmp_path / "la_4ch.nii.gz")
    assert cine.frames.shape == (50, 96, 96) and cine.frames.dtype == np.float32
    assert cine.frames.min() >= -1.0 and cine.frames.max() <= 1.0
    np.testing.assert_allclose(cine.frames, expected_canonical(frames), atol=1e-5)
    assert cine.source_shape == (50, 128, 120)
    assert cine.source_frame_interval_s == pytest.approx(0.02)
    assert cine.frame_interval_s == pytest.approx(0.02)
    assert cine.spacing_mm == pytest.approx((1.8, 1.8))  # 172.8 mm field of view over 96 px
    assert cine.format == "nifti"


def test_nifti_orientation_rows_are_rows(tmp_path):
    """data[:, :, 0, t] = frames[t].T: a bright top-left square stays top-left (no crop: 96×96 source)."""
    frames = np.zeros((50, 96, 96), np.float32)
    frames[:, 5:25, 5:15] = 1.0
    frames[:, 70:90, 60:90] = np.linspace(0.2, 0.8, 50)[:, None, None]
    write_nifti_cine(tmp_path / "c.nii", frames)
    cine = read_cine(tmp_path / "c.nii")
    assert cine.frames[0, 10, 10] == 1.0 and cine.frames[0, 10, 50] == -1.0
    assert cine.crop_box == (0.0, 0.0, 96.0, 96.0)


def test_write_cine_is_lossless_and_in_the_input_space(tmp_path):
    frames, _ = beating_disc()
    affine = np.array([[0, -2.0, 0, 30], [-2.0, 0, 0, 40], [0, 0, 8.0, -5], [0, 0, 0, 1]])
    write_nifti_cine(tmp_path / "in.nii.gz", frames, (2.0, 2.0), 0.025, affine=affine)
    cine = read_cine(tmp_path / "in.nii.gz")
    generated = np.random.default_rng(1).random((50, 96, 96)).astype(np.float32)
    out = write_cine(tmp_path / "gen" / "out.nii.gz", generated, like=cine)
    back = read_cine(out)
    np.testing.assert_array_equal(back.frames, generated * 2 - 1)
    np.testing.assert_array_equal(back.frames01, generated)  # the written array itself
    tiny = np.full((50, 96, 96), 1e-9, dtype=np.float32)  # 2·x − 1 in float32 cannot hold this …
    assert ((read_cine(write_cine(tmp_path / "tiny.nii", tiny)).frames + 1) * 0.5 == 0).all()
    np.testing.assert_array_equal(read_cine(tmp_path / "tiny.nii").frames01, tiny)  # … frames01 does
    np.testing.assert_allclose(back.affine, cine.affine, atol=1e-4)
    assert back.frame_interval_s == pytest.approx(0.025, rel=1e-5)
    # canonical voxel (col, row) → world equals the source voxel it was sampled from
    r0, c0, r1, c1 = cine.crop_box
    col, row = 10, 70
    src = np.array([c0 + (col + 0.5) * (c1 - c0) / 96 - 0.5, r0 + (row + 0.5) * (r1 - r0) / 96 - 0.5, 0, 1])
    np.testing.assert_allclose(cine.affine @ [col, row, 0, 1], affine @ src, atol=1e-6)
    img = nib.load(str(out))
    assert img.shape == (96, 96, 1, 50) and img.header.get_xyzt_units() == ("mm", "sec")
    uint8 = write_cine(tmp_path / "u8.nii", generated, spacing_mm=(1.5, 1.5), frame_interval_s=0.03,
                       dtype="uint8")
    assert nib.load(str(uint8)).get_data_dtype() == np.uint8


def test_thirty_frames_are_resampled_and_flagged(tmp_path):
    frames, _ = beating_disc(t=30)
    write_nifti_cine(tmp_path / "c.nii.gz", frames, (2.0, 2.0), 1.0 / 30)
    cine = read_cine(tmp_path / "c.nii.gz")
    assert cine.frames.shape == (50, 96, 96)
    assert "resampled 30→50 frames" in cine.flags
    assert cine.frame_interval_s == pytest.approx(1.0 / 50, rel=1e-5)
    area = (cine.frames > 0).sum(axis=(1, 2))
    assert area.argmax() in (0, 49) and abs(int(area.argmin()) - 25) <= 2  # the beat kept its timing


def test_unset_time_units_in_milliseconds(tmp_path):
    frames, _ = beating_disc()
    img = nib.Nifti1Image(np.ascontiguousarray(frames.transpose(2, 1, 0)[:, :, None, :]), np.eye(4))
    img.header.set_zooms((2.0, 2.0, 8.0, 20.0))  # ms, units left unset
    nib.save(img, str(tmp_path / "ms.nii.gz"))
    cine = read_cine(tmp_path / "ms.nii.gz")
    assert cine.source_frame_interval_s == pytest.approx(0.02)
    assert any("milliseconds" in f for f in cine.flags)


def test_nifti_xyt_with_time_units_is_a_cine(tmp_path):
    frames, _ = beating_disc(t=25)
    img = nib.Nifti1Image(np.ascontiguousarray(frames.transpose(2, 1, 0)), np.eye(4))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((2.0, 2.0, 40.0))
    nib.save(img, str(tmp_path / "xyt.nii.gz"))
    cine = read_cine(tmp_path / "xyt.nii.gz")
    assert cine.source_shape == (25, 128, 120) and cine.source_frame_interval_s == pytest.approx(0.04)
    assert cine.frame_interval_s == pytest.approx(0.02)


@pytest.mark.parametrize("shape, zooms, problem", [
    ((64, 64, 12), (2.0, 2.0, 8.0), "3-D volume"),
    ((64, 64, 12, 1), (2.0, 2.0, 8.0, 1.0), "3-D volume"),
    ((64, 64, 1, 5), (2.0, 2.0, 8.0, 0.02), "only 5 frame"),
    ((64, 64, 4, 50), (2.0, 2.0, 8.0, 0.02), "stack of 4 slices"),
])
def test_nifti_that_is_not_a_cine_is_refused(tmp_path, shape, zooms, problem):
    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4))
    img.header.set_zooms(zooms)
    nib.save(img, str(tmp_path / "v.nii.gz"))
    with pytest.raises(InputError, match=problem) as err:
        read_cine(tmp_path / "v.nii.gz")
    assert "\n" not in str(err.value) and str(tmp_path / "v.nii.gz") in str(err.value)


def test_empty_and_corrupt_files_are_refused(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_cine(tmp_path / "empty.nii.gz")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti at all" * 40)
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_cine(tmp_path / "junk.nii")
    with pytest.raises(InputError, match="not found"):
        read_cine(tmp_path / "missing.nii.gz")


# ----------------------------------------------------------------------------- crop


def test_crop_by_mask_centres_the_heart(tmp_path):
    frames, mask = beating_disc(centre=(30.0, 90.0))
    write_nifti_cine(tmp_path / "c.nii.gz", frames, (2.0, 2.0))
    write_nifti_cine(tmp_path / "m.nii.gz", mask, (2.0, 2.0))
    cine = read_cine(tmp_path / "c.nii.gz", mask=tmp_path / "m.nii.gz")
    assert any(f.startswith("crop: mask bounding box") for f in cine.flags)
    rows, cols = np.nonzero(cine.frames[0] > 0)
    assert abs(rows.mean() - 47.5) < 1.5 and abs(cols.mean() - 47.5) < 1.5
    # a 32 px disc at 2 mm is 64 mm: 64/1.8 ≈ 35.6 canonical pixels across (scale kept, not stretched)
    assert abs((cols.max() - cols.min() + 1) - 64 / 1.8) < 2.5
    labels = read_mask(tmp_path / "m.nii.gz", like=cine)
    assert labels.shape == (50, 96, 96)
    assert ((labels[0] > 0) == (cine.frames[0] > 0)).mean() > 0.98
    tight = read_cine(tmp_path / "c.nii.gz", mask=tmp_path / "m.nii.gz", fov_mm=None)
    assert (tight.frames[0] > 0).mean() > 0.3  # the heart fills a tight crop


def test_crop_fallback_finds_the_moving_heart_without_mask(tmp_path):
    frames, _ = beating_disc(centre=(85.0, 35.0))
    frames[:, 5:30, 5:30] = 900  # a bright static structure must not attract the crop
    write_nifti_cine(tmp_path / "c.nii.gz", frames, (2.0, 2.0))
    cine = read_cine(tmp_path / "c.nii.gz")
    assert any("temporal standard deviation" in f for f in cine.flags)
    rows, cols = np.nonzero(cine.frames[0] > 0.0)
    inside = (rows > 20) & (rows < 76) & (cols > 20) & (cols < 76)
    assert inside.mean() > 0.95


def test_static_cine_falls_back_to_the_centre(tmp_path):
    frames = np.tile(beating_disc()[0][:1], (50, 1, 1))
    write_nifti_cine(tmp_path / "c.nii.gz", frames, (2.0, 2.0))
    cine = read_cine(tmp_path / "c.nii.gz")
    assert any("image centre" in f for f in cine.flags)
    assert cine.crop_box[0] + cine.crop_box[2] == pytest.approx(128.0)


def test_mask_of_another_size_is_refused(tmp_path):
    frames, mask = beating_disc()
    write_nifti_cine(tmp_path / "c.nii.gz", frames)
    np.save(tmp_path / "m.npy", mask[:, :100])
    with pytest.raises(InputError, match="mask is 100×120"):
        read_cine(tmp_path / "c.nii.gz", mask=tmp_path / "m.npy")


# ----------------------------------------------------------------------------- DICOM


def test_dicom_series_read_in_trigger_time_order(tmp_path):
    frames, _ = beating_disc()
    frames[:, 0, 0] = np.arange(50) * 10  # a frame counter in the corner
    write_dicom_series(tmp_path / "series", frames, dt_ms=18.0)
    (tmp_path / "series" / "README.txt").write_text("not DICOM")
    raw = cmr_readers._read_dicom_folder(tmp_path / "series")
    np.testing.assert_array_equal(raw.frames[:, 0, 0], np.arange(50) * 10)
    cine = read_cine(tmp_path / "series")
    np.testing.assert_allclose(cine.frames, expected_canonical(frames), atol=1e-5)
    assert cine.format == "dicom_series"
    assert cine.source_frame_interval_s == pytest.approx(0.018)
    # LPS → RAS: x along the rows flips to −x; rows run along −z (feet) in LPS and RAS alike
    np.testing.assert_allclose(cine.source_affine[:3, 0], [-2.0, 0, 0])
    np.testing.assert_allclose(cine.source_affine[:3, 1], [0, 0, -2.0])
    np.testing.assert_allclose(cine.source_affine[:3, 3], [100.0, 80.0, 20.0])
    info = inspect_cine(tmp_path / "series")
    json.dumps(info)
    assert info["frames"] == 50 and info["orientation"] == ["L", "I", "P"] and info["spacing_mm"] == [2.0, 2.0]


def test_dicom_missing_frame_within_limit_is_filled(tmp_path):
    frames, _ = beating_disc()
    write_dicom_series(tmp_path / "s", frames, skip=(17,))
    cine = read_cine(tmp_path / "s")
    assert "filled missing frame 17 with frame 16" in cine.flags
    raw = cmr_readers._read_dicom_folder(tmp_path / "s")
    np.testing.assert_array_equal(raw.frames[17], raw.frames[16])
    write_dicom_series(tmp_path / "first", frames, skip=(0,))
    assert "filled missing frame 0 with frame 1" in read_cine(tmp_path / "first").flags


def test_dicom_too_many_missing_frames_is_refused(tmp_path):
    frames, _ = beating_disc()
    write_dicom_series(tmp_path / "s", frames, skip=(5, 6, 30))
    with pytest.raises(InputError, match=r"47 of 50 frames \(3 missing: 5, 6, 30\)"):
        read_cine(tmp_path / "s")


def test_mixed_lax_series_gives_the_middle_view(tmp_path):
    """A CINE_segmented_LAX series of 3×T images in the order 3Ch, 4Ch, 2Ch (docs/formats.md)."""
    t = 12
    views = [np.full((t, 32, 32), v, np.uint16) for v in (100, 200, 300)]
    for v in views:
        v[:, 8:20, 8:20] += np.arange(t, dtype=np.uint16)[:, None, None] * 5
    stacked = np.concatenate(views)
    paths = write_dicom_series(tmp_path / "mixed", stacked, description="CINE_segmented_LAX")
    import pydicom

    for p in paths:  # one series: instance order 1..3T, trigger times repeat per view
        ds = pydicom.dcmread(p)
        ds.TriggerTime = (ds.InstanceNumber - 1) % t * 30.0
        ds.CardiacNumberOfImages = t
        ds.save_as(p)
    raw = cmr_readers._read_dicom_folder(tmp_path / "mixed")
    assert raw.frames.shape == (t, 32, 32) and raw.frames[0, 0, 0] == 200
    assert any("took the 2nd of 3 views" in f for f in raw.flags)


def test_dicom_folder_without_images_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM images"):
        read_cine(tmp_path / "d")


# ----------------------------------------------------------------------------- UK Biobank zip


def make_ukb_zip(tmp_path: Path, frames: np.ndarray, manifest_name: str = "manifest.cvs",
                 with_4ch: bool = True) -> Path:
    """A field-20208 style zip: 4Ch series + a decoy 2Ch series, and a quirky manifest."""
    four = write_dicom_series(tmp_path / "src4", frames, series_number=5) if with_4ch else []
    decoy_frames = np.full_like(frames, 7)
    decoy_frames[:, :20, :20] = np.arange(50)[:, None, None] * 20 + 100
    decoy = write_dicom_series(tmp_path / "src2", decoy_frames, description="CINE_segmented_LAX_2Ch",
                               series_number=9)
    lines = ["filename,patientid,studyid,aetitle,date,numcoils,series discription"]
    for p in four:
        lines.append(f"{p.name},1000001,1.2.3,UKB,Mar 3, 2015,1,CINE_segmented_LAX_4Ch")
    for p in decoy:
        lines.append(f"{p.name},1000001,1.2.3,UKB,Mar 3, 2015,1,CINE_segmented_LAX_2Ch")
    path = tmp_path / "1000001_20208_2_0.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(manifest_name, "\n".join(lines) + "\n")
        for p in [*decoy, *four]:
            zf.write(p, p.name)
    return path


def test_ukb_zip_picks_the_four_chamber_series(tmp_path):
    frames, _ = beating_disc()
    path = make_ukb_zip(tmp_path, frames)
    cine = read_cine(path)
    assert cine.format == "ukb_zip"
    np.testing.assert_allclose(cine.frames, expected_canonical(frames), atol=1e-5)
    assert not list(Path.cwd().glob("*.dcm")) and not (tmp_path / "1000001_20208_2_0").exists()


def test_ukb_zip_without_four_chamber_series_is_refused(tmp_path):
    frames, _ = beating_disc()
    path = make_ukb_zip(tmp_path, frames, with_4ch=False)
    with pytest.raises(InputError, match=r"no CINE_segmented_LAX_4Ch series \(found: CINE_segmented_LAX_2Ch\)"):
        read_cine(path)


def test_ukb_manifest_with_commas_in_dates():
    text = ("filename,patientid,studyid,aetitle,date,numcoils,series discription\n"
            "a.dcm,1,2,UKB,Mar 3, 2015,1,CINE_segmented_LAX_4Ch\n"
            "b.dcm,1,2,UKB,\"Apr 12, 2016\",1,CINE_segmented_LAX_2Ch\n"
            "c.dcm,1,2,UKB,odd, date, here,1,CINE_segmented_LAX_3Ch\n")
    assert cmr_readers._parse_ukb_manifest(text) == {"a.dcm": "CINE_segmented_LAX_4Ch",
                                             "b.dcm": "CINE_segmented_LAX_2Ch",
                                             "c.dcm": "CINE_segmented_LAX_3Ch"}


# ----------------------------------------------------------------------------- .npy


def test_npy_cine(tmp_path):
    frames, _ = beating_disc(t=40)
    np.save(tmp_path / "c.npy", frames.astype(np.float32))
    cine = read_cine(tmp_path / "c.npy")
    assert cine.frames.shape == (50, 96, 96) and cine.format == "npy_cine"
    assert "resampled 40→50 frames" in cine.flags
    assert any("spacing unknown" in f for f in cine.flags) and any("frame interval unknown" in f for f in cine.flags)
    np.save(tmp_path / "nan.npy", np.full((50, 64, 64), np.nan, np.float32))
    with pytest.raises(InputError, match="non-finite"):
        read_cine(tmp_path / "nan.npy")
    np.save(tmp_path / "ecg.npy", np.zeros((12, 5000), np.float32))
    with pytest.raises(InputError, match="ECG"):
        read_cine(tmp_path / "ecg.npy")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_write_nifti_gz_content_equals_nibabel(tmp_path: Path, dtype) -> None:
    """The direct .nii.gz writer holds nibabel's exact NIfTI bytes, in a timestamp-free gzip."""
    import gzip

    frames = (np.random.default_rng(0).random((50, 40, 32)) * 200).astype(dtype)
    write_nifti_cine(tmp_path / "ours.nii.gz", frames, (1.5, 1.7), 0.021, slice_thickness_mm=6.0)
    write_nifti_cine(tmp_path / "ref.nii", frames, (1.5, 1.7), 0.021, slice_thickness_mm=6.0)  # nib.save
    ours = (tmp_path / "ours.nii.gz").read_bytes()
    assert gzip.decompress(ours) == (tmp_path / "ref.nii").read_bytes()
    assert ours[4:8] == b"\0\0\0\0" and not ours[3] & 0x08  # no mtime, no file name
