"""Hostile and careless files: every reader answers with one InputError, within a memory cap, never hangs.

One table per family; each table is read in one capped subprocess (``hostile.read_all_capped``), which
also reports its peak memory.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import hostile
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.manifest import id_problem, read_manifest, spreadsheet_safe
from ecgflowcmr.limits import SCALE_ENV, check_count
from test_cmr import beating_disc

PEAK_LIMIT = 300 << 20
"""Every table's worst case stays below this resident size (measured: ~95 MB, most of it the readers' imports;
a reader that inflated any of these files would need GBs)."""


def _expect(results: dict, expected: dict[str, str]) -> None:
    for path, fragment in expected.items():
        kind, message = results[path]
        assert kind == "InputError", (path, kind, message)
        assert "\n" not in message and fragment.lower() in message.lower(), (path, message)


def test_ecg_family(tmp_path: Path) -> None:
    cases: dict[str, str] = {}

    def case(path: Path, fragment: str) -> None:
        cases[str(path)] = fragment

    slash = tmp_path / "slash"
    slash.mkdir()
    case(hostile.wfdb_header(slash / "rec.hea", dat="../other/rec.dat"), "plain file name")
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "rec.dat")
    case(hostile.wfdb_header(fifo / "rec.hea"), "not a regular file")
    big = tmp_path / "big"
    big.mkdir()
    case(hostile.wfdb_header(big / "rec.hea", n=10**12), "exceeds the limit")
    for name, total in (("nan", "nan"), ("inf", "inf"), ("neg", "-5")):
        p = tmp_path / f"count_{name}.xml"
        p.write_bytes(hostile.ukb_xml_text(total))
        case(p, "ChannelSampleCountTotal")
    for name, resolution in (("negres", "-5"), ("zerores", "0"), ("nanres", "nan")):
        p = tmp_path / f"{name}.xml"
        p.write_bytes(hostile.ukb_xml_text("3", resolution))
        case(p, "positive resolution")
    p = tmp_path / "exponent.xml"
    p.write_bytes(hostile.muse_xml_text("400"))
    case(p, "SampleExponent")
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    case(empty, "no arrays")
    case(hostile.npz_bomb(tmp_path / "bomb.npz", (12, 250_000_000)), "exceeds the limit")
    case(hostile.npy_header_only(tmp_path / "wide.npy", (12, 10**9)), "exceeds the limit")
    np.save(tmp_path / "complex.npy", np.ones((12, 5000), np.complex64))
    case(tmp_path / "complex.npy", "complex")
    case(hostile.dicom_ecg_zero_channels(tmp_path / "zero.dcm"), "no ECG channels")
    loop = tmp_path / "loop.xml"
    os.symlink(loop.name, loop)
    case(loop, "loop.xml")
    case(tmp_path / ("x" * 300 + ".xml"), "not a usable path")
    items = [("ecg", path) for path in cases] + [("ecg", str(tmp_path / "nul\0.xml"))]
    results, peak = hostile.read_all_capped(items)
    _expect(results, cases)
    assert results[str(tmp_path / "nul\0.xml")][0] == "InputError"
    assert peak < PEAK_LIMIT, peak


def test_cine_family(tmp_path: Path) -> None:
    cases: dict[str, str] = {}

    def case(path: Path | str, fragment: str, kind: str = "cine") -> None:
        cases[str(path)] = fragment
        kinds[str(path)] = kind

    kinds: dict[str, str] = {}
    frames, mask = beating_disc(t=20, h=40, w=40)
    case(hostile.nifti_header_claiming(tmp_path / "huge.nii.gz", (4900, 4900, 1, 2000)), "exceeds the limit")
    rgb = np.zeros((40, 40, 1, 20), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    case(hostile.nifti(tmp_path / "rgb.nii.gz", rgb), "RGB")
    nan_affine = np.diag([1.8, 1.8, 8.0, 1.0])
    nan_affine[0, 3] = np.nan
    cine4d = frames.transpose(2, 1, 0)[:, :, None, :].astype(np.float32)
    case(hostile.nifti(tmp_path / "nan_affine.nii.gz", cine4d, affine=nan_affine), "NaN")
    case(hostile.nifti(tmp_path / "complex.nii.gz", cine4d.astype(np.complex64)), "complex")
    case(hostile.nifti(tmp_path / "spacing.nii.gz", cine4d, zooms=(1e6, 1e6, 8.0, 0.02)), "pixel spacing")
    dicoms = tmp_path / "dicoms"
    dicoms.mkdir()
    wide = [hostile.dicom_image(dicoms / f"w{k}.dcm", rows=4900, cols=4900, k=k, pixels=b"\0" * 64)
            for k in range(3)]
    case(hostile.zip_of(tmp_path / "wide.zip", wide), "exceeds the limit")
    phases = [hostile.dicom_image(dicoms / f"p{k}.dcm", t=2_000_000_000, k=k) for k in range(3)]
    case(hostile.zip_of(tmp_path / "phases.zip", phases), "exceeds the limit")
    rgb_dcm = [hostile.dicom_image(dicoms / f"c{k}.dcm", k=k, samples=3) for k in range(12)]
    case(hostile.zip_of(tmp_path / "colour.zip", rgb_dcm), "colour")
    case(hostile.zip_with_method(tmp_path / "deflate64.zip", method=9), "compression method")
    case(hostile.zip_with_method(tmp_path / "encrypted.zip", encrypted=True), "encrypted")
    empty = tmp_path / "empty_cine.npz"
    with zipfile.ZipFile(empty, "w"):
        pass
    case(empty, "no arrays")
    np.save(tmp_path / "complex_cine.npy", np.ones((20, 40, 40), np.complex64))
    case(tmp_path / "complex_cine.npy", "complex")
    case(hostile.npy_header_only(tmp_path / "long.npy", (100_000, 96, 96), "<f4"), "exceeds the limit")
    cine_path = hostile.nifti(tmp_path / "cine.nii.gz", cine4d)
    labels = mask.copy()
    labels[0, 0, 0] = 9
    np.save(tmp_path / "labels9.npy", labels)
    case(f"{cine_path}|{tmp_path / 'labels9.npy'}", "labels 0–5", "cine+mask")
    np.save(tmp_path / "frames7.npy", mask[:7])
    case(f"{cine_path}|{tmp_path / 'frames7.npy'}", "7 frames", "cine+mask")
    for label, fs in (("zero", "0"), ("negative", "-500"), ("nan", "nan"), ("inf", "inf")):
        folder = tmp_path / f"fs_{label}"
        folder.mkdir()
        hea = hostile.wfdb_header(folder / "rec.hea", fs=fs)
        (folder / "rec.dat").write_bytes(np.zeros((5000, 12), "<i2").tobytes())
        case(hea, "sampling rate", "inspect")
    for name in ("rgb.nii.gz", "nan_affine.nii.gz", "deflate64.zip", "encrypted.zip"):
        case(f"{tmp_path / name}#inspect", cases[str(tmp_path / name)], "inspect")
    items = [(kinds[p], p.removesuffix("#inspect")) for p in cases]
    results, peak = hostile.read_all_capped(items)
    _expect({p: results[p.removesuffix("#inspect")] for p in cases}, cases)
    assert peak < PEAK_LIMIT, peak
    results, _ = hostile.read_all_capped([("cine+mask", f"{cine_path}|{tmp_path / 'mask.npy'}")]
                                         if np.save(tmp_path / "mask.npy", mask) is None else [])
    assert results[f"{cine_path}|{tmp_path / 'mask.npy'}"][0] == "ok"  # the same cine with a good mask reads


def test_dicom_folder_with_fifo_and_loop_does_not_hang(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    frames, _ = beating_disc(t=20, h=40, w=40)
    for k in range(20):
        hostile.dicom_image(folder / f"{k:02d}.dcm", rows=40, cols=40, k=k, pixels=frames[k].tobytes())
    os.mkfifo(folder / "pipe")
    os.symlink("loop", folder / "loop")
    results, _ = hostile.read_all_capped([("cine", str(folder))], timeout=60)
    assert results[str(folder)][0] == "ok", results


@pytest.mark.parametrize(("text", "fragment"), [
    ("subject_id,split,ecg_path\n1,train,a.hea,\n", None),                     # trailing comma: fine
    ("subject_id,split,ecg_path\n1,train,a.hea,extra\n", "4 fields"),
    ("subject_id,split,ecg_path\n1,train,a\0.hea\n", "NUL"),
    ("subject_id,split,ecg_path\n1,train," + "x" * 70_000 + "\n", "longer than"),
])
def test_manifest_rows_carry_their_problem(tmp_path: Path, text: str, fragment: str | None) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    (row,) = list(read_manifest(path).iter_rows())
    assert (row.problem is None) if fragment is None else (fragment in row.problem), row.problem
    assert row.values["subject_id"] == "1"


def test_manifest_paths_that_cannot_be_paths(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    path = tmp_path / "manifest.csv"
    path.write_text("subject_id,split,ecg_path\n1,train,loop/x.hea\n")
    manifest = read_manifest(path)
    for value in ("loop/x.hea", "a\0b"):
        with pytest.raises(InputError, match="subject"):
            manifest.resolve({"subject_id": "1", "ecg_path": value}, "ecg_path")
    assert manifest.resolve({"subject_id": "1", "ecg_path": ""}, "ecg_path") is None


@pytest.mark.parametrize(("sid", "ok"), [("1234", True), ("a-b_c.d", True), ("", False), ("../x", False),
                                         ("/abs", False), ("a\\b", False), (".hidden", False), ("..", False),
                                         ("nul\0", False), ("z" * 129, False), ("tab\tid", False)])
def test_subject_ids_that_name_files(sid: str, ok: bool) -> None:
    assert (id_problem(sid) is None) == ok


@pytest.mark.parametrize(("cell", "safe"), [("=1+1", "'=1+1"), ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
                                            ("1234", "1234"), ("", "")])
def test_spreadsheet_safe(cell: str, safe: str) -> None:
    assert spreadsheet_safe(cell) == safe


def test_limit_scale_override(monkeypatch) -> None:
    with pytest.raises(InputError, match="exceeds the limit"):
        check_count("f", "frames", 300, 250)
    monkeypatch.setenv(SCALE_ENV, "2")
    check_count("f", "frames", 300, 250)
    monkeypatch.setenv(SCALE_ENV, "nan")
    with pytest.raises(InputError, match=SCALE_ENV):
        check_count("f", "frames", 1, 250)


def test_refusals_are_not_wrapped_twice(tmp_path: Path) -> None:
    """An InputError raised inside a reader's error handling reaches the user as it was, not as 'malformed …'."""
    folder = tmp_path / "phases"
    folder.mkdir()
    for k in range(12):
        hostile.dicom_image(folder / f"{k}.dcm", t=2_000_000_000, k=k)
    np.save(tmp_path / "mask4d.npy", np.zeros((2, 2, 8, 8), np.uint8))
    results, _ = hostile.read_all_capped([("cine", str(folder)), ("mask", str(tmp_path / "mask4d.npy"))])
    for kind, message in results.values():
        assert kind == "InputError" and message.count("InputError") == 0 and "malformed" not in message, message
