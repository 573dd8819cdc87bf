"""Hostile inputs made by the tests themselves, and a runner that reads them under a memory cap.

Each builder writes one small file (or folder) that once crashed a reader, hung it or took the whole
machine; nothing here is committed as data. :func:`read_all_capped` reads a list of such paths in one
subprocess whose address space is capped (``resource.setrlimit(RLIMIT_AS)``), so a reader that tries to
inflate a bomb dies of MemoryError inside the cap instead of taking the test machine, and reports per path
what was raised and the process's peak memory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

MEMORY_CAP_BYTES = 3 << 30

_RUNNER = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from ecgflowcmr.io.cmr import read_cine, read_mask
from ecgflowcmr.io.ecg import read_ecg
from ecgflowcmr.io.inspect import inspect_file
from ecgflowcmr.errors import InputError
how = {"ecg": read_ecg, "cine": read_cine, "inspect": inspect_file, "mask": read_mask,
       "cine+mask": lambda p: read_cine(p.split("|")[0], mask=p.split("|")[1])}
out = {}
for item in json.loads(sys.stdin.read()):
    kind, path = item
    try:
        how[kind](path)
        out[path] = ["ok", ""]
    except InputError as err:
        out[path] = ["InputError", str(err)]
    except BaseException as err:
        out[path] = [type(err).__name__, str(err)[:300]]
# VmHWM: this process's own peak (ru_maxrss would carry the forking parent's peak across exec)
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
out["__maxrss_kb__"] = [hwm[0] if hwm else str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), ""]
print(json.dumps(out))
"""


def read_all_capped(items: list[tuple[str, str]], cap: int = MEMORY_CAP_BYTES,
                    timeout: float = 120) -> tuple[dict[str, tuple[str, str]], int]:
    """Read each (kind, path) under an address-space cap; ({path: (exception type, message)}, peak RSS bytes).

    kind: ``ecg``, ``cine``, ``inspect``, ``mask``, or ``cine+mask`` with path ``"cine|mask"``.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(cap)], input=json.dumps(items),
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    peak = int(out.pop("__maxrss_kb__")[0]) * 1024
    return {k: (v[0], v[1]) for k, v in out.items()}, peak


# ------------------------------------------------------------------------------------------ ECG files


def wfdb_header(path: Path, *, n_sig: int = 12, fs: str = "500", n: int = 5000, dat: str = "rec.dat") -> Path:
    lines = [f"{path.stem} {n_sig} {fs} {n}"]
    lines += [f"{dat} 16 1000.0(0)/mV 16 0 0 0 0 {lead}" for lead in
              ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")[:n_sig]]
    path.write_text("\n".join(lines) + "\n")
    return path


def ukb_xml_text(count_total: str, resolution: str = "5") -> bytes:
    waves = "".join(f'<WaveformData lead="{lead}">1,2,3</WaveformData>' for lead in ("I", "II"))
    return (f'<?xml version="1.0"?><CardiologyXML><StripData><SampleRate units="Hz">500</SampleRate>'
            f"<ChannelSampleCountTotal>{count_total}</ChannelSampleCountTotal>"
            f'<Resolution units="uVperLsb">{resolution}</Resolution>{waves}</StripData></CardiologyXML>').encode()


def muse_xml_text(exponent: str) -> bytes:
    return (f"<?xml version='1.0'?><RestingECG><Waveform><WaveformType>Rhythm</WaveformType>"
            f"<SampleBase>500</SampleBase><SampleExponent>{exponent}</SampleExponent></Waveform></RestingECG>").encode()


def dicom_ecg_zero_channels(path: Path) -> Path:
    item = Dataset()
    item.MultiplexGroupLabel = "RHYTHM"
    item.NumberOfWaveformChannels = 0
    item.NumberOfWaveformSamples = 5000
    item.SamplingFrequency = 500
    item.ChannelDefinitionSequence = []
    item.WaveformBitsAllocated = 16
    item.WaveformSampleInterpretation = "SS"
    item.WaveformData = b""
    _save_dicom(path, "1.2.840.10008.5.1.4.1.1.9.1.1", "ECG", WaveformSequence=[item])
    return path


def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "<f8") -> Path:
    """A ``.npy`` whose header declares ``shape`` but which holds no data (the header is what is checked)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": dtype, "fortran_order": False, "shape": shape})
    return path


def npz_bomb(path: Path, shape: tuple[int, ...]) -> Path:
    """An ``.npz`` whose one member declares ``shape`` float64 in its zip entry and header, deflated data cut
    short: a few hundred bytes that ask numpy for the whole array."""
    header = npy_header_only(path.with_suffix(".hdr"), shape).read_bytes()
    path.with_suffix(".hdr").unlink()
    info = zipfile.ZipInfo("ecg.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, header + bytes(1 << 16))
    _patch_zip_sizes(path, int(np.prod(shape)) * 8 + len(header))
    return path


def _patch_zip_sizes(path: Path, size: int) -> None:
    """Rewrite the uncompressed size of the (single) entry in the local and central headers."""
    data = bytearray(path.read_bytes())
    size = min(size, 0xFFFFFFFF)
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, size)
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, size)
    path.write_bytes(bytes(data))


def zip_with_method(path: Path, method: int | None = None, encrypted: bool = False) -> Path:
    """A one-entry zip claiming compression ``method`` (e.g. 9, Deflate64) or the encryption flag."""
    info = zipfile.ZipInfo("IM_0001.dcm")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, b"\0" * 256)
    data = bytearray(path.read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    if method is not None:
        struct.pack_into("<H", data, local + 8, method)
        struct.pack_into("<H", data, central + 10, method)
    if encrypted:
        struct.pack_into("<H", data, local + 6, 1)
        struct.pack_into("<H", data, central + 8, 1)
    path.write_bytes(bytes(data))
    return path


# ------------------------------------------------------------------------------------------ cine files


def nifti(path: Path, data: np.ndarray, *, affine: np.ndarray | None = None, zooms=(1.8, 1.8, 8.0, 0.02),
          dtype=None) -> Path:
    img = nib.Nifti1Image(data, np.diag([1.8, 1.8, 8.0, 1.0]) if affine is None else affine, dtype=dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(zooms[: data.ndim])
    nib.save(img, str(path))
    return path


def nifti_header_claiming(path: Path, shape: tuple[int, ...]) -> Path:
    """A ``.nii.gz`` whose header declares ``shape`` (float32) with almost no data after it."""
    img = nib.Nifti1Image(np.zeros((2, 2, 1, 2), np.float32), np.eye(4))
    img.header.set_data_shape(shape)
    img.header.set_xyzt_units("mm", "sec")
    raw = path.with_suffix("")
    raw.write_bytes(img.header.binaryblock + b"\0" * 4 + b"\0" * 4096)
    import gzip

    path.write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()
    return path


def dicom_image(path: Path, *, rows: int = 32, cols: int = 32, t: int = 20, k: int = 0,
                pixels: bytes | None = None, samples: int = 1) -> Path:
    """One MR image of a four-chamber series, its header saying (rows, cols, CardiacNumberOfImages=t)."""
    data = pixels if pixels is not None else np.zeros((rows, cols), np.uint16).tobytes()
    _save_dicom(path, MRImageStorage, "MR", SeriesDescription="CINE_segmented_LAX_4Ch", SeriesNumber=1,
                SeriesInstanceUID="1.2.3", InstanceNumber=k + 1, TriggerTime=20.0 * k, CardiacNumberOfImages=t,
                PixelSpacing=[1.8, 1.8], Rows=rows, Columns=cols, BitsAllocated=16, BitsStored=16, HighBit=15,
                PixelRepresentation=0, SamplesPerPixel=samples, PhotometricInterpretation="MONOCHROME2",
                PixelData=data)
    return path


def _save_dicom(path: Path, sop_class: str, modality: str, **elements) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def zip_of(path: Path, files: list[Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    return path


# ------------------------------------------------------------------------------------------ a bundle


def tiny_bundle(root: Path, *, steps: int = 2) -> Path:
    """A loadable bundle of untrained tiny networks (seeded): enough to drive ``generate`` end to end."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from ecgflowcmr.bundle import save_weights, write_bundle
    from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
    from ecgflowcmr.models.dit import DiTConfig
    from ecgflowcmr.models.pa_mae import PAMAE, PAMAEConfig
    from ecgflowcmr.models.vae3d import VAEConfig, VideoVAE

    torch.manual_seed(0)
    pamae_cfg = PAMAEConfig(width=16, depth=1, heads=2, decoder_width=8, decoder_depth=1, decoder_heads=1)
    vae_cfg = VAEConfig(channels=(8, 8, 8, 8), num_blocks=1, norm_groups=4, attention_heads=2)
    flow_cfg = FlowConfig(dit=DiTConfig(latent_channels=4, frames=50, latent_size=12, cond_dim=16, patch=3,
                                        width=16, depth=2, heads=2), sample_steps=steps)
    template = 0.1 * torch.randn(flow_cfg.latent_shape)
    runs = {name: root / name for name in ("pamae", "vae", "flow")}
    for name, model, cfg in (("pamae", PAMAE(pamae_cfg), pamae_cfg), ("vae", VideoVAE(vae_cfg), vae_cfg),
                             ("flow", FlowMatching(flow_cfg, template), flow_cfg)):
        save_weights(model, runs[name], dataclasses.asdict(cfg))
    save_file({"template": template}, str(runs["vae"] / "template.safetensors"))
    return write_bundle(root / "bundle", pamae_run=runs["pamae"], vae_run=runs["vae"], flow_run=runs["flow"],
                        sampling={"steps": steps, "method": "euler", "guidance": None},
                        geometry={"spacing_mm": [1.8, 1.8]})


def ecg_cohort(root: Path, ids: list[str]) -> Path:
    """WFDB ECGs (synthetic, one per id, heart rates 60–90 bpm) and ``manifest.csv`` naming them."""
    import csv

    from ecgflowcmr.io.ecg import write_wfdb
    from test_phase import synthetic_ecg

    (root / "ecg").mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject_id", "split", "ecg_path"])
        for k, sid in enumerate(ids):
            record = root / "ecg" / f"r{k}"
            signal, _ = synthetic_ecg(seed=k, heart_rate=60.0 + 30.0 * k / max(len(ids), 1))
            write_wfdb(record, signal)
            writer.writerow([sid, "test", f"ecg/r{k}.hea"])
    return root / "manifest.csv"
