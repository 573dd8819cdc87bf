"""One phantom subject end to end (``simulate_subject``), and a cohort written to disk (``make_cohort``).

Every subject has its own random streams, seeded from ``(seed, index)`` with ``np.random.SeedSequence``,
so subject i is the same whatever N and whichever worker makes it, and the same seed gives the same bytes.
Layout of a cohort folder::

    manifest.csv                     one row per subject (docs/formats.md); paths relative to this folder
    ecg/<subject_id>.hea, .dat       WFDB, 12 leads, 500 Hz, 10 s, 1 µV per LSB
    cmr/<subject_id>.nii.gz          cine, X×Y×1×50 uint8, spacing in mm, frame interval in s
    cmr/<subject_id>_mask.nii.gz     labels 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV, 4 LA, 5 RA

Manifest columns: subject_id, split (train/val/test/ecg_only), ecg_path, cmr_path and mask_path (empty for
ecg_only), the phenotypes of ``_phenotypes`` (unit in each name; ``sex`` is M/F), diagnosis (normal, hcm,
dcm, rcm, mi), mi_territory (lad/lcx/rca or empty), cad, cm, hf (0/1), heart_rate_bpm (60 / mean R-R of
the record), rpeak_samples (the true R-peaks, space-separated sample indices) and cine_rpeak_sample (the
R-peak at which the cine's beat starts; empty for ecg_only). That beat is the record's middle one or either
neighbour, drawn: a cine is acquired apart from its ECG, so which beat it shows — and with it where its
end-systole falls, ±1.3 frames between the three — is not in the ECG (``benchmarks/es_floor.py`` measures
what that leaves to a perfect generator).
"""

from __future__ import annotations

import csv
import io
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgflowcmr.atomic import atomic_file, ensure_dir
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.cmr import write_nifti_cine
from ecgflowcmr.io.ecg import write_wfdb
from ecgflowcmr.phantom.cine import Cine, render_cine
from ecgflowcmr.phantom.cohort import Physiology, draw_physiology, draw_split, has_heart_failure
from ecgflowcmr.phantom.config import PhantomConfig, load_phantom_config
from ecgflowcmr.phantom.ecg import ECGResult, simulate_ecg
from ecgflowcmr.phantom.heart import BETA, Geometry, heart_geometry


@dataclass
class Subject:
    """A simulated subject in memory: arrays and phenotypes, nothing written."""

    index: int
    subject_id: str
    split: str
    physiology: Physiology
    ecg: ECGResult
    cine: Cine | None
    """None for the ``ecg_only`` split."""
    phenotypes: dict[str, float | str]
    """Manifest phenotype columns (units in the names), in order."""


def subject_id(index: int) -> str:
    return f"PH{index:06d}"


SUBJECT_FILE = re.compile(r"(PH\d{6})(_mask)?\.(hea|dat|nii\.gz)")
"""The names ``write_subject`` gives its files: the only files ``remove_stale`` may delete."""


def simulate_subject(index: int, seed: int, cfg: PhantomConfig, with_cine: bool | None = None,
                     beat: int | None = None) -> Subject:
    """Simulate subject ``index`` of the cohort ``seed`` (no I/O). ``with_cine`` None → by its split.

    ``beat`` (an index into ``ecg.candidate_beats``) shows the cine on that beat instead of the drawn one:
    the same subject, record and image noise, another equally likely cine (``benchmarks/es_floor.py``).
    """
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(5)]
    rng_split, rng_body, rng_ecg, rng_shape, rng_image = streams
    split = draw_split(rng_split, cfg)
    phys = draw_physiology(rng_body, cfg)
    ecg = simulate_ecg(phys, rng_ecg, cfg)
    if beat is not None:
        ecg = ecg.on_beat(ecg.candidate_beats[beat])
    # The heart's shape has its own seed: ecg_only subjects get the phenotypes a cine would show.
    shape_seed = int(rng_shape.integers(2**63))
    geo = heart_geometry(phys, np.array([1.0, 0.0]), np.random.default_rng(shape_seed))
    render = split != "ecg_only" if with_cine is None else with_cine
    cine = render_cine(phys, ecg, cfg, rng_image, shape_seed) if render else None
    return Subject(index=index, subject_id=subject_id(index), split=split, physiology=phys, ecg=ecg, cine=cine,
                   phenotypes=_phenotypes(phys, ecg, geo))


def _phenotypes(p: Physiology, ecg: ECGResult, geo: Geometry) -> dict[str, float | str]:
    edv, ef = p.lvedv_ml, p.lvef_pct
    esv = edv * (1 - ef / 100)
    rvesv = p.rvedv_ml * (1 - p.rvef_pct / 100)
    # 4-chamber atrial areas at their maximum (ventricular end-systole): the truncated-ellipse section.
    section = np.pi / 2 + np.arcsin(0.5) + 0.5 * np.sqrt(0.75)
    rr = 60.0 / ecg.heart_rate_bpm
    return {
        "age_years": round(p.age_years, 1),
        "sex": "M" if p.male else "F",
        "height_cm": round(p.height_cm, 1),
        "weight_kg": round(p.weight_kg, 1),
        "bsa_m2": round(p.bsa_m2, 3),
        "lvedv_ml": round(edv, 1),
        "lvesv_ml": round(esv, 1),
        "lvsv_ml": round(edv - esv, 1),
        "lvef_pct": round(ef, 1),
        "lvco_l_min": round((edv - esv) * ecg.heart_rate_bpm / 1000, 2),
        "lvm_g": round(p.lvm_g, 1),
        "lvedvi_ml_m2": round(edv / p.bsa_m2, 1),
        "lvmi_g_m2": round(p.lvm_g / p.bsa_m2, 1),
        "lv_length_mm": round(float((1 + BETA) * geo.a[0]), 1),
        "septal_wall_mm": round(float(geo.t_sep[0]), 1),
        "lateral_wall_mm": round(float(geo.t_lat[0]), 1),
        "wall_thickness_mm": round(float(max(geo.t_sep[0], geo.t_lat[0])), 1),
        "rvedv_ml": round(p.rvedv_ml, 1),
        "rvesv_ml": round(rvesv, 1),
        "rvsv_ml": round(p.rvedv_ml - rvesv, 1),
        "rvef_pct": round(p.rvef_pct, 1),
        "lav_max_ml": round(p.lav_max_ml, 1),
        "lav_min_ml": round(p.lav_min_ml, 1),
        "laef_pct": round(100 * (1 - p.lav_min_ml / p.lav_max_ml), 1),
        "rav_max_ml": round(p.rav_max_ml, 1),
        "rav_min_ml": round(p.rav_min_ml, 1),
        "laa_max_cm2": round(float(section * geo.la_a[1] * geo.la_b[1]) / 100, 1),
        "raa_max_cm2": round(float(section * geo.ra_a[1] * geo.ra_b[1]) / 100, 1),
        "mapse_mm": round(p.mapse_mm, 1),
        "tapse_mm": round(p.tapse_mm, 1),
        "pr_ms": round(p.pr_ms, 0),
        "qrs_duration_ms": round(p.qrs_ms, 0),
        "qt_ms": round(ecg.qt_ms, 0),
        "qtc_ms": round(ecg.qt_ms / np.sqrt(rr), 0),
        "qrs_axis_deg": round(p.qrs_axis_deg, 0),
        "sokolow_lyon_mv": round(ecg.sokolow_lyon_mv, 2),
    }


# ------------------------------------------------------------------------------------------ writing


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.6f}"
    return str(value)


ORACLE_DIR = "ecg_only_cines"
"""With ``ecg_only_cines``, the cine each ECG-only subject would have had, ``<out>/ecg_only_cines/<id>.nii.gz``:
outside the manifest (the cohort stays ECG-only), for measuring what a perfect generator would give."""


def write_subject(index: int, seed: int, cfg: PhantomConfig, out: Path, ecg_only_cines: bool = False) -> dict[str, str]:
    """Simulate subject ``index`` and write its files under ``out``; return its manifest row."""
    s = simulate_subject(index, seed, cfg, with_cine=True if ecg_only_cines else None)
    write_wfdb(out / "ecg" / s.subject_id, s.ecg.signal, cfg.ecg_fs)
    paired = s.split != "ecg_only"
    cmr_path = mask_path = ""
    if s.cine is not None:
        files = ((f"cmr/{s.subject_id}.nii.gz", s.cine.frames), (f"cmr/{s.subject_id}_mask.nii.gz", s.cine.masks))
        if paired:
            cmr_path, mask_path = files[0][0], files[1][0]
        else:  # its true cine, outside the manifest; the same bytes as if it had been paired
            files = ((f"{ORACLE_DIR}/{s.subject_id}.nii.gz", s.cine.frames),)
        for rel, arr in files:
            with atomic_file(out / rel) as tmp:
                write_nifti_cine(tmp, arr, (s.cine.spacing_mm, s.cine.spacing_mm), s.cine.frame_interval_s,
                                 slice_thickness_mm=cfg.slice_thickness_mm)
    p = s.physiology
    row: dict[str, object] = {
        "subject_id": s.subject_id, "split": s.split, "ecg_path": f"ecg/{s.subject_id}.hea",
        "cmr_path": cmr_path, "mask_path": mask_path, **s.phenotypes,
        "diagnosis": p.diagnosis, "mi_territory": p.mi_territory, "cad": p.diagnosis == "mi",
        "cm": p.diagnosis in ("hcm", "dcm", "rcm"), "hf": has_heart_failure(p.diagnosis, p.lvef_pct),
        "heart_rate_bpm": round(s.ecg.heart_rate_bpm, 2),
        "rpeak_samples": " ".join(str(int(r)) for r in s.ecg.rpeaks),
        "cine_rpeak_sample": s.ecg.cine_rpeak if paired else "",
    }
    return {k: _fmt(v) for k, v in row.items()}


def _write_chunk(args: tuple[list[int], int, PhantomConfig, Path, bool]) -> list[dict[str, str]]:
    indices, seed, cfg, out, ecg_only_cines = args
    return [write_subject(i, seed, cfg, out, ecg_only_cines) for i in indices]


def make_cohort(out: str | Path, n: int, seed: int = 0, config: str | Path | PhantomConfig | None = None,
                workers: int = 1, ecg_only_cines: bool = False) -> Path:
    """Simulate ``n`` subjects into ``out`` (WFDB ECGs, NIfTI cines + masks, manifest.csv); return the manifest.

    Same ``seed`` → identical bytes, with any ``workers``. The manifest is written last, atomically: a
    cohort folder without one is incomplete. Subject files of an earlier, larger cohort in ``out`` are
    deleted after the new manifest is in place, so the folder holds exactly the cohort its manifest lists.
    ``ecg_only_cines`` also writes the cine each ECG-only subject would have had (``ORACLE_DIR``; a
    diagnostic the phantom alone can give: ``downstream --cines truth=<out>/ecg_only_cines``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError("--n", f"expected a positive number of subjects, got {n!r}")
    if not isinstance(workers, int) or workers < 1:
        raise InputError("--workers", f"expected ≥ 1, got {workers!r}")
    if seed < 0:
        raise InputError("--seed", f"expected a non-negative integer, got {seed!r}")
    cfg = config if isinstance(config, PhantomConfig) else load_phantom_config(config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    ensure_dir(out / "ecg", "cohort folder")
    ensure_dir(out / "cmr", "cohort folder")
    if ecg_only_cines:
        ensure_dir(out / ORACLE_DIR, "cohort folder")

    workers = min(workers, n)
    if workers == 1:
        rows = [write_subject(i, seed, cfg, out, ecg_only_cines) for i in range(n)]
    else:
        import multiprocessing

        size = max(1, min(32, n // (4 * workers)))
        chunks = [(list(range(i, min(i + size, n))), seed, cfg, out, ecg_only_cines) for i in range(0, n, size)]
        # fork: no re-import of the caller's __main__ (scripts need no main guard); spawn where there is none.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            rows = [row for chunk in pool.map(_write_chunk, chunks) for row in chunk]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = out / "manifest.csv"
    with atomic_file(manifest) as tmp:
        tmp.write_text(buffer.getvalue())
    remove_stale(out, {row["subject_id"] for row in rows})
    # true cines of ECG-only subjects only where this call wrote them (another seed's would look like ours)
    remove_stale(out, {r["subject_id"] for r in rows if r["split"] == "ecg_only"} if ecg_only_cines else set(),
                 folders=(ORACLE_DIR,))
    return manifest


def remove_stale(out: Path, keep: set[str], folders: tuple[str, ...] = ("ecg", "cmr")) -> int:
    """Delete the phantom subject files in ``out/<folder>`` whose subject is not in ``keep``.

    Only names ``write_subject`` writes (``SUBJECT_FILE``) are touched, never other files. Returns the count.
    """
    removed = 0
    for folder in (out / name for name in folders):
        for path in folder.iterdir() if folder.is_dir() else ():
            match = SUBJECT_FILE.fullmatch(path.name)
            if match and match.group(1) not in keep:
                path.unlink()
                removed += 1
    return removed
