"""The paired ECG–CMR phantom (docs/decisions.md): determinism, physics checks, file formats, the CLI."""

from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import wfdb
from scipy.stats import spearmanr

from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.io.cmr import write_nifti_cine
from ecgflowcmr.io.ecg import write_wfdb
from ecgflowcmr.phantom import PhantomConfig, load_phantom_config, make_cohort, simulate_subject

FS = 500
# A smaller matrix at a coarser pixel keeps the field of view (~230 mm) and the physics, at half the cost.
FAST = replace(PhantomConfig(), image_size=96, pixel_spacing_mm=(2.3, 2.5))


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("a") / "cohort", n=8, seed=11, workers=1)


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_any_workers_any_n(cohort: Path, tmp_path: Path) -> None:
    again = make_cohort(tmp_path / "w2", n=8, seed=11, workers=2)
    assert _files(cohort.parent) == _files(again.parent)
    # Subject i is the same whatever N: the first 3 of a 3-subject cohort equal those of the 8-subject one.
    small = make_cohort(tmp_path / "n3", n=3, seed=11)
    big_files, small_files = _files(cohort.parent), _files(small.parent)
    for name, digest in small_files.items():
        if name != "manifest.csv":
            assert big_files[name] == digest, name
    assert _rows(small) == _rows(cohort)[:3]
    other = make_cohort(tmp_path / "seed12", n=3, seed=12)
    assert _files(other.parent)["ecg/PH000000.dat"] != big_files["ecg/PH000000.dat"]


def test_ecg_only_cines_leave_the_cohort_as_it_was(cohort: Path, tmp_path: Path) -> None:
    """--ecg-only-cines adds each ECG-only subject's true cine outside the manifest and changes no other byte;
    the cine is the one that subject would have had if paired; a rerun without the flag removes them."""
    from ecgflowcmr.io.cmr import read_cine

    out = tmp_path / "truth"
    make_cohort(out, n=8, seed=11, ecg_only_cines=True)
    files, plain = _files(out), _files(cohort.parent)
    truth = {k for k in files if k.startswith("ecg_only_cines/")}
    assert {k: v for k, v in files.items() if k not in truth} == plain
    ecg_only = [r["subject_id"] for r in _rows(cohort) if r["split"] == "ecg_only"]
    assert ecg_only and truth == {f"ecg_only_cines/{sid}.nii.gz" for sid in ecg_only}
    cfg = PhantomConfig()
    expected = simulate_subject(int(ecg_only[0][2:]), 11, cfg, with_cine=True).cine
    write_nifti_cine(tmp_path / "expected.nii.gz", expected.frames, (expected.spacing_mm, expected.spacing_mm),
                     expected.frame_interval_s, slice_thickness_mm=cfg.slice_thickness_mm)
    frames = read_cine(out / "ecg_only_cines" / f"{ecg_only[0]}.nii.gz").frames
    assert frames.shape == (50, 96, 96) and frames.std() > 0
    assert np.array_equal(frames, read_cine(tmp_path / "expected.nii.gz").frames)
    make_cohort(out, n=8, seed=11)
    assert _files(out) == plain


def test_a_smaller_cohort_over_a_larger_one_leaves_only_its_own_files(tmp_path: Path) -> None:
    """Rewriting a folder with a smaller --n deletes the extra subjects' files, and nothing that is not ours."""
    out = tmp_path / "cohort"
    make_cohort(out, n=4, seed=3)
    (out / "ecg" / "notes.txt").write_text("mine")
    (out / "cmr" / "PH000003_seg.nii.gz").write_bytes(b"not a phantom name")
    make_cohort(out, n=2, seed=3)
    rows = _rows(out / "manifest.csv")
    expected = {"manifest.csv", "ecg/notes.txt", "cmr/PH000003_seg.nii.gz"}
    for r in rows:
        sid = r["subject_id"]
        expected |= {f"ecg/{sid}.hea", f"ecg/{sid}.dat"} | ({r["cmr_path"], r["mask_path"]} if r["cmr_path"] else set())
    assert [r["subject_id"] for r in rows] == ["PH000000", "PH000001"]
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == expected


# ------------------------------------------------------------------------------------------- formats


def test_manifest_and_files(cohort: Path) -> None:
    rows = _rows(cohort)
    assert len(rows) == 8
    required = {"subject_id", "split", "ecg_path", "cmr_path", "mask_path", "diagnosis", "cad", "cm", "hf",
                "heart_rate_bpm", "rpeak_samples", "lvedv_ml", "lvesv_ml", "lvef_pct", "lvm_g", "rvedv_ml"}
    assert required <= set(rows[0])
    units = ("_ml", "_pct", "_g", "_mm", "_ms", "_cm2", "_m2", "_bpm", "_mv", "_deg", "_years", "_kg", "_cm",
             "_l_min", "_ml_m2", "_g_m2")
    assert sum(name.endswith(units) for name in rows[0]) >= 15
    assert {r["split"] for r in rows} <= {"train", "val", "test", "ecg_only"}
    for r in rows:
        record = wfdb.rdrecord(str(cohort.parent / r["ecg_path"][: -len(".hea")]))
        assert record.fs == FS and record.sig_name == ["I", "II", "III", "aVR", "aVL", "aVF", *[
            f"V{i}" for i in range(1, 7)]] and record.p_signal.shape == (5000, 12) and record.units[0] == "mV"
        lead_i, lead_ii, lead_iii = record.p_signal[:, 0], record.p_signal[:, 1], record.p_signal[:, 2]
        assert np.abs(lead_iii - (lead_ii - lead_i)).max() <= 0.0021  # Einthoven, to the µV rounding
        if r["split"] == "ecg_only":
            assert r["cmr_path"] == "" and r["mask_path"] == ""
            continue
        cine, mask = nib.load(cohort.parent / r["cmr_path"]), nib.load(cohort.parent / r["mask_path"])
        assert cine.shape == (128, 128, 1, 50) and mask.shape == cine.shape
        assert cine.get_data_dtype() == np.uint8 and mask.get_data_dtype() == np.uint8
        assert cine.header.get_xyzt_units() == ("mm", "sec")
        zooms = cine.header.get_zooms()
        assert 1.7 < zooms[0] == zooms[1] < 2.4
        rr = np.diff([int(x) for x in r["rpeak_samples"].split()])
        assert 0.3 / 50 < zooms[3] < 1.3 / 50 and int(r["cine_rpeak_sample"]) in map(int, r["rpeak_samples"].split())
        labels = np.asarray(mask.dataobj)
        for t in range(50):
            assert set(np.unique(labels[..., 0, t])) == {0, 1, 2, 3, 4, 5}, (r["subject_id"], t)
        assert rr.min() > 0


def test_cli_phantom_end_to_end(tmp_path: Path) -> None:
    from ecgflowcmr.cli import main

    config = tmp_path / "phantom.yaml"
    config.write_text("ecg_only_fraction: 0.0\nprevalence: {normal: 0.5, hcm: 0.5, dcm: 0, rcm: 0, mi: 0}\n")
    main(["phantom", "--out", str(tmp_path / "c"), "--n", "3", "--seed", "2", "--config", str(config)])
    rows = _rows(tmp_path / "c" / "manifest.csv")
    assert len(rows) == 3 and all(r["split"] != "ecg_only" and r["diagnosis"] in ("normal", "hcm") for r in rows)
    assert all((tmp_path / "c" / r["cmr_path"]).is_file() for r in rows)


def test_documented_default_config_matches_the_dataclass() -> None:
    from ecgflowcmr.config import PRESET_DIR

    assert load_phantom_config(PRESET_DIR / "phantom" / "default.yaml") == PhantomConfig()


def test_downstream_preset_has_ecg_only_subjects_for_the_largest_default_mix() -> None:
    """`phantom --config downstream` (a preset name): at the documented 1,800 subjects the ECG-only share
    covers the `tiny` downstream default's 300 % mix of the held-out `train` split, with room to spare."""
    from ecgflowcmr.config import load_config
    from ecgflowcmr.downstream.config import DownstreamConfig

    cfg = load_phantom_config("downstream")
    n, mix = 1800, max(load_config(DownstreamConfig, "downstream", "tiny").mix)
    ecg_only = n * cfg.ecg_only_fraction
    train = n * (1 - cfg.ecg_only_fraction) * cfg.split_fractions[0]
    assert ecg_only > 1.3 * (mix * train * 1.05 + 2)
    with pytest.raises(ConfigError, match="no preset"):
        load_phantom_config("nonsense")


def test_config_rejects_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ecg_only_fractoin: 0.2\n")
    with pytest.raises(ConfigError, match="ecg_only_fractoin"):
        load_phantom_config(bad)
    bad.write_text("prevalence: {normal: 0.5, hcm: 0.1}\n")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_phantom_config(bad)
    bad.write_text("prevalence: {normal: 0.9, amyloid: 0.1}\n")
    with pytest.raises(ConfigError, match="amyloid"):
        load_phantom_config(bad)
    with pytest.raises(InputError, match="--n"):
        make_cohort(tmp_path / "x", n=0)


# ------------------------------------------------------------------------------------------- physics


def test_lvef_agrees_with_mask_area_change_and_es_at_t_end() -> None:
    ef, fac, lag = [], [], []
    for i in range(30):
        s = simulate_subject(i, 21, FAST, with_cine=True)
        area = (s.cine.masks == 1).sum(axis=(1, 2))
        ef.append(s.physiology.lvef_pct)
        fac.append(1 - area.min() / area[0])
        # End-systole (smallest LV blood pool) where the T wave ends.
        lag.append(int(area.argmin()) * s.cine.frame_interval_s - s.ecg.cine_t_end_s)
    assert spearmanr(ef, fac)[0] >= 0.8
    assert np.median(np.abs(lag)) < 0.04 and np.max(np.abs(lag)) < 0.1



def test_a_cine_on_another_candidate_beat_keeps_the_subject_and_moves_end_systole() -> None:
    moved = 0
    for i in range(8):
        s = simulate_subject(i, 23, FAST, with_cine=True)
        beats = s.ecg.candidate_beats
        assert len(beats) == 3 and any(b.rpeak == s.ecg.cine_rpeak for b in beats)
        assert all(b.rpeak in s.ecg.rpeaks for b in beats)
        shown = next(k for k, b in enumerate(beats) if b.rpeak == s.ecg.cine_rpeak)
        again = simulate_subject(i, 23, FAST, with_cine=True, beat=shown)
        np.testing.assert_array_equal(again.cine.frames, s.cine.frames)
        other = simulate_subject(i, 23, FAST, with_cine=True, beat=(shown + 1) % 3)
        np.testing.assert_array_equal(other.ecg.signal, s.ecg.signal)
        assert other.physiology == s.physiology and other.cine.spacing_mm == s.cine.spacing_mm
        b = beats[(shown + 1) % 3]
        assert (other.ecg.cine_rpeak, other.ecg.cine_t_end_s) == (b.rpeak, b.t_end_s)
        area = (other.cine.masks == 1).sum(axis=(1, 2))
        assert abs(int(area.argmin()) * other.cine.frame_interval_s - b.t_end_s) < 0.1
        moved += b.rpeak != s.ecg.cine_rpeak and not np.array_equal(other.cine.masks, s.cine.masks)
    assert moved >= 6

def test_lv_mass_drives_qrs_voltage_on_the_written_file(tmp_path: Path) -> None:
    lvm, voltage = [], []
    for i in range(60):
        s = simulate_subject(i, 31, FAST, with_cine=False)
        write_wfdb(tmp_path / s.subject_id, s.ecg.signal, FS)
        x = wfdb.rdrecord(str(tmp_path / s.subject_id)).p_signal.T
        beats = [x[:, r - 30 : r + 30] for r in s.ecg.rpeaks if 30 <= r < x.shape[1] - 30]
        voltage.append(np.median([np.ptp(b, axis=1).sum() for b in beats]))  # Σ over leads of QRS peak-to-peak
        lvm.append(s.physiology.lvm_g)
    assert spearmanr(lvm, voltage)[0] > 0.5


def test_heart_rate_and_rpeaks_from_an_independent_detector(tmp_path: Path) -> None:
    import neurokit2 as nk

    tp = fp = fn = 0
    for i in range(30):
        s = simulate_subject(i, 41, FAST, with_cine=False)
        write_wfdb(tmp_path / s.subject_id, s.ecg.signal, FS)
        lead_ii = wfdb.rdrecord(str(tmp_path / s.subject_id), channel_names=["II"]).p_signal[:, 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, info = nk.ecg_peaks(lead_ii, sampling_rate=FS)
        found = np.asarray(info["ECG_R_Peaks"])
        assert abs(60 * FS / np.mean(np.diff(found)) - s.ecg.heart_rate_bpm) < 3
        # F1 within 20 ms over the interior 0.5–9.5 s (detectors lose beats at the record edges).
        inner = slice(FS // 2, len(lead_ii) - FS // 2)
        truth = s.ecg.rpeaks[(s.ecg.rpeaks >= inner.start) & (s.ecg.rpeaks < inner.stop)]
        found = found[(found >= inner.start) & (found < inner.stop)]
        near = np.abs(found[:, None] - truth[None, :]) <= 0.02 * FS
        tp += int(near.any(axis=0).sum())
        fn += int((~near.any(axis=0)).sum())
        fp += int((~near.any(axis=1)).sum())
    assert 2 * tp / (2 * tp + fp + fn) >= 0.99


def test_phenotypes_in_physiological_ranges_and_labels_consistent() -> None:
    ranges = {"lvedv_ml": (50, 450), "lvesv_ml": (15, 380), "lvef_pct": (15, 82), "lvm_g": (40, 350),
              "rvedv_ml": (50, 400), "rvef_pct": (25, 75), "lav_max_ml": (20, 260), "rav_max_ml": (20, 300),
              "wall_thickness_mm": (3.5, 32), "qrs_duration_ms": (70, 180), "pr_ms": (110, 260),
              "qt_ms": (280, 520), "bsa_m2": (1.3, 2.7), "age_years": (45, 80), "laa_max_cm2": (8, 60),
              "lv_length_mm": (60, 130)}
    seen = set()
    for i in range(150):
        s = simulate_subject(i, 51, FAST, with_cine=False)
        for name, (lo, hi) in ranges.items():
            assert lo <= s.phenotypes[name] <= hi, (name, s.phenotypes[name], s.physiology.diagnosis)
        assert 50 <= s.ecg.heart_rate_bpm <= 105
        p = s.physiology
        seen.add(p.diagnosis)
        if p.diagnosis == "dcm":
            assert s.phenotypes["lvef_pct"] <= 40 and s.phenotypes["lvedv_ml"] > 150
        if p.diagnosis == "hcm":
            assert s.phenotypes["wall_thickness_mm"] >= 13 and s.phenotypes["lvef_pct"] >= 64
    assert seen == {"normal", "hcm", "dcm", "rcm", "mi"}
