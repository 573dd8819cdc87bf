"""Peak memory of the readers on small hostile files (bombs): the number the README's limits section quotes.

Each case is built here (a few MB on disk, GBs once inflated) and read by ``read_ecg``/``read_cine`` or the
manifest reader in a fresh subprocess under an address-space cap (``--cap-gb``, default 8), which reports its
peak resident memory (``VmHWM``) and what it raised. Run it against another checkout with
``PYTHONPATH=/path/to/other/src python benchmarks/hostile_memory.py`` to compare.

    python benchmarks/hostile_memory.py [--cap-gb 8] [--cases npz_bomb,nifti_bomb,...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

CHUNK = 64 << 20


def npz_bomb(root: Path) -> tuple[str, str]:
    """12 × 40 M float64 zeros (3.8 GB) deflated into a ~4 MB .npz."""
    shape = (12, 40_000_000)
    path = root / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("ecg.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
        _zeros(fh, 8 * shape[0] * shape[1])
    return "ecg", str(path)


def nifti_bomb(root: Path) -> tuple[str, str]:
    """A 2000 × 2000 × 1 × 120 float32 NIfTI of zeros (1.9 GB) gzipped to a few MB."""
    import nibabel as nib

    shape = (2000, 2000, 1, 120)
    img = nib.Nifti1Image(np.zeros((2, 2, 1, 2), np.float32), np.eye(4))
    img.header.set_data_shape(shape)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((1.8, 1.8, 8.0, 0.02))
    path = root / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(img.header.binaryblock + b"\0" * 4)
        _zeros(fh, 4 * int(np.prod(shape)))
    return "cine", str(path)


def _mr_cine_image(k: int, rows: int, cols: int, phases: int):
    """Image k of a four-chamber cine series: a DICOM dataset declaring rows × cols pixels and ``phases``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.SeriesDescription, ds.SeriesInstanceUID, ds.SeriesNumber = "CINE_segmented_LAX_4Ch", "1.2.3", 1
    ds.InstanceNumber, ds.TriggerTime, ds.CardiacNumberOfImages = k + 1, 20.0 * k, phases
    ds.PixelSpacing, ds.Rows, ds.Columns = [1.8, 1.8], rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(2 * rows * cols)
    return ds


def dicom_zip_bomb(root: Path) -> tuple[str, str]:
    """A zip of 20 DICOM images declaring 4900 × 4900 pixels each (0.96 GB of pixels), ~1 MB deflated."""
    path = root / "bomb.zip"
    buffer = root / "one.dcm"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k in range(20):
            _mr_cine_image(k, 4900, 4900, phases=20).save_as(buffer, enforce_file_format=True)
            zf.write(buffer, f"IM_{k:04d}.dcm")
    buffer.unlink()
    return "cine", str(path)


def dicom_phases(root: Path) -> tuple[str, str]:
    """A DICOM folder of 12 small images whose header claims 2·10⁹ cardiac phases."""
    folder = root / "phases"
    folder.mkdir()
    for k in range(12):
        _mr_cine_image(k, 32, 32, phases=2_000_000_000).save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return "cine", str(folder)


def manifest_rows(root: Path) -> tuple[str, str]:
    """A 1,000,000-row manifest (12 columns, ~110 MB)."""
    path = root / "manifest.csv"
    columns = ["subject_id", "split", "ecg_path", "cmr_path", "mask_path"] + [f"pheno_{i}_ml" for i in range(7)]
    with open(path, "w") as fh:
        fh.write(",".join(columns) + "\n")
        for i in range(1_000_000):
            fh.write(f"{1000000 + i},test,ecg/{i}.hea,cmr/{i}.nii.gz,cmr/{i}_mask.nii.gz,"
                     + ",".join(f"{(i * 7 + j) % 997}.{j}" for j in range(7)) + "\n")
    return "manifest", str(path)


def _zeros(fh, n: int) -> None:
    block = bytes(CHUNK)
    while n > 0:
        fh.write(block[: min(n, CHUNK)])
        n -= CHUNK


CASES = {"npz_bomb": npz_bomb, "nifti_bomb": nifti_bomb, "dicom_zip_bomb": dicom_zip_bomb,
         "dicom_phases": dicom_phases, "manifest_rows": manifest_rows}

_RUNNER = r"""
import json, resource, sys, time
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
kind, path = sys.argv[2], sys.argv[3]
start = time.perf_counter()
try:
    if kind == "ecg":
        from ecgflowcmr.io.ecg import read_ecg
        read_ecg(path)
    elif kind == "cine":
        from ecgflowcmr.io.cmr import read_cine
        read_cine(path)
    else:
        from ecgflowcmr.io.manifest import read_manifest
        m = read_manifest(path)
        rows = sum(1 for _ in m.iter_rows()) if hasattr(m, "iter_rows") else len(m.rows)
    outcome = "accepted"
except BaseException as err:
    outcome = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
# VmHWM: this process's own peak (ru_maxrss would carry the forking parent's peak across exec)
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
peak_kb = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "seconds": round(time.perf_counter() - start, 2),
                  "peak_rss_mb": round(peak_kb / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-gb", type=float, default=8.0, help="address-space cap of each reading process")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            root = Path(tmp) / name
            root.mkdir()
            start = time.perf_counter()
            kind, path = CASES[name](root)
            size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
            built = time.perf_counter() - start
            result = subprocess.run([sys.executable, "-c", _RUNNER, str(int(args.cap_gb * 2**30)), kind, path],
                                    capture_output=True, text=True, env=env, timeout=600)
            line = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else json.dumps(
                {"outcome": f"process died ({result.returncode}): {result.stderr.strip()[-160:]}"})
            print(json.dumps({"case": name, "file_mb": round(size / 2**20, 1), "built_s": round(built, 1),
                              **json.loads(line)}), flush=True)


if __name__ == "__main__":
    main()
