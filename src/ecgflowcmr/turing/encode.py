"""One presentation and one encoder for every cine of a study, so that only the pictures differ.

Every cine, real or generated, goes through the same steps (docs/turing.md, "What is hidden"):

1. :func:`present` — the canonical cine (50, 96, 96) in [-1, 1] gets the same intensity scaling (its own
   1st–99th percentile → [0, 255], clipped) and becomes uint8 grey frames. Scaling every cine here, and
   not trusting the source's scaling, removes a contrast tell between sources written by different code.
2. :func:`encode_h264` — H.264 (libx264, High profile, yuv420p, CRF fixed, a fixed GOP: one key frame,
   no B-frames, no scene-cut key frames) at the canonical 96×96 and a fixed frame rate; the page shows
   every video at the same 384×384 on screen (the browser's scaling, the same for all). Written as an
   Annex B stream with an access-unit delimiter before every frame.
3. :func:`pad_access_units` — each frame's bytes depend on its content (a blurry generated cine compresses
   to a fraction of a sharp real one). A filler NAL unit (H.264 type 12, ignored by decoders) pads frame k
   of every cine to the largest frame k of the whole study, so every frame of every video has the same
   byte count at the same position.
4. :func:`mux_mp4` — the padded stream is copied into MP4 without metadata (``-map_metadata -1``,
   bit-exact muxing: no encoder tag, no creation time). The ``moov`` box (timing, sample sizes, key
   frames, codec parameters) is then byte-identical across the study and every file has the same size;
   only the compressed pictures inside ``mdat`` differ.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from ecgflowcmr.canonical import N_FRAMES, SIZE

ENCODED_SIZE = SIZE
"""Encoded width and height in pixels: the canonical grid, no resampling (the page scales it to 384)."""
CINE_SHAPE = (N_FRAMES, SIZE, SIZE)
DEFAULT_FPS = 25.0
"""Frames per second of every video: the 50-frame cycle loops every 2 s, whatever the source's heart rate."""
CRF = 12
"""x264 constant rate factor (lower = better); near-lossless for 96×96 grey cines (~35 to 175 kB each)."""
PERCENTILES = (1.0, 99.0)

# Everything that shapes the stream is fixed here and identical for every cine of every study.
_X264_PARAMS = f"aud=1:keyint={N_FRAMES}:min-keyint={N_FRAMES}:scenecut=0:bframes=0:b-adapt=0:open-gop=0"
_START = b"\x00\x00\x01"


def present(frames: np.ndarray) -> np.ndarray:
    """Canonical cine float (50, 96, 96) in [-1, 1] → uint8 grey frames (50, 96, 96), one scaling for all."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape != CINE_SHAPE:
        raise ValueError(f"expected a canonical cine {CINE_SHAPE}, got {frames.shape}")
    if not np.isfinite(frames).all():
        raise ValueError("cine holds NaN or infinity")
    lo, hi = np.percentile(frames, PERCENTILES)
    scaled = (frames - lo) / max(float(hi - lo), 1e-6)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(cmd: list[str], input: bytes | None = None) -> None:
    result = subprocess.run(cmd, input=input, capture_output=True)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed ({result.returncode}): {reason[-1] if reason else 'no message'}")


def encode_h264(grey: np.ndarray, out: Path, fps: float = DEFAULT_FPS) -> Path:
    """uint8 (T, 96, 96) → Annex B H.264 at ``out`` (see the module docstring for the settings)."""
    _, h, w = grey.shape
    if (h, w) != (ENCODED_SIZE, ENCODED_SIZE):
        raise ValueError(f"expected {ENCODED_SIZE}×{ENCODED_SIZE} frames, got {h}×{w}")
    cmd = [_ffmpeg(), "-nostdin", "-v", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}",
           "-framerate", f"{fps:g}", "-i", "pipe:0",
           "-vf", "format=yuv420p",
           "-c:v", "libx264", "-profile:v", "high", "-preset", "medium", "-crf", str(CRF), "-threads", "1",
           "-x264-params", _X264_PARAMS, "-fflags", "+bitexact", "-flags:v", "+bitexact",
           "-f", "h264", "-y", str(out)]
    _run(cmd, input=np.ascontiguousarray(grey).tobytes())
    return out


def split_nal_units(stream: bytes) -> list[bytes]:
    """Annex B byte stream → NAL units without start codes (trailing zero bytes belong to no unit)."""
    starts = []
    i = stream.find(_START)
    while i >= 0:
        starts.append(i + 3)
        i = stream.find(_START, i + 3)
    units = []
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else len(stream)
        units.append(stream[s:end].rstrip(b"\x00"))
    return units


def access_units(stream: bytes) -> list[list[bytes]]:
    """NAL units grouped per frame: a new access unit starts at each delimiter (NAL type 9)."""
    frames: list[list[bytes]] = []
    for nal in split_nal_units(stream):
        if nal[0] & 0x1F == 9 or not frames:
            frames.append([])
        frames[-1].append(nal)
    return frames


def sample_size(unit: list[bytes]) -> int:
    """Bytes the access unit occupies as an MP4 sample (each NAL unit behind a 4-byte length)."""
    return sum(4 + len(nal) for nal in unit)


FILLER_OVERHEAD = 6
"""Smallest filler NAL unit as an MP4 sample part: 4-byte length, header byte, trailing 0x80."""


def filler_nal(sample_bytes: int) -> bytes:
    """A filler NAL unit (type 12: 0xFF payload, RBSP trailing bits) taking ``sample_bytes`` in a sample."""
    if sample_bytes < FILLER_OVERHEAD:
        raise ValueError(f"a filler NAL unit needs at least {FILLER_OVERHEAD} bytes, got {sample_bytes}")
    return b"\x0c" + b"\xff" * (sample_bytes - FILLER_OVERHEAD) + b"\x80"


def pad_access_units(units: list[list[bytes]], targets: list[int]) -> bytes:
    """Annex B stream with access unit k padded by a filler NAL to ``targets[k]`` bytes as an MP4 sample."""
    if len(units) != len(targets):
        raise ValueError(f"{len(units)} access units but {len(targets)} target sizes")
    out = bytearray()
    for unit, target in zip(units, targets):
        pad = target - sample_size(unit)
        if pad != 0 and pad < FILLER_OVERHEAD:
            raise ValueError(f"access unit of {sample_size(unit)} bytes cannot be padded to {target}")
        for nal in unit + ([filler_nal(pad)] if pad else []):
            out += b"\x00\x00\x00\x01" + nal
    return bytes(out)


def padding_targets(all_units: list[list[list[bytes]]]) -> list[int]:
    """Per frame position, the largest sample of the study plus room for a filler NAL unit."""
    n_frames = {len(units) for units in all_units}
    if len(n_frames) != 1:
        raise ValueError(f"videos differ in frame count: {sorted(n_frames)}")
    return [max(sample_size(units[k]) for units in all_units) + FILLER_OVERHEAD
            for k in range(n_frames.pop())]


def mux_mp4(stream: Path, out: Path, fps: float = DEFAULT_FPS) -> Path:
    """Annex B H.264 → MP4 at ``out``: stream copy, no metadata, bit-exact, ``moov`` first."""
    cmd = [_ffmpeg(), "-nostdin", "-v", "error", "-f", "h264", "-framerate", f"{fps:g}", "-i", str(stream),
           "-c:v", "copy", "-map_metadata", "-1", "-map_chapters", "-1", "-fflags", "+bitexact",
           "-flags:v", "+bitexact", "-movflags", "+faststart", "-f", "mp4", "-y", str(out)]
    _run(cmd)
    return out


def mp4_boxes(data: bytes) -> list[tuple[str, bytes]]:
    """Top-level MP4 boxes as (type, whole box bytes); for tests and checks."""
    boxes, i = [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[i + 8:i + 16], "big")
        elif size == 0:
            size = len(data) - i
        if size < 8:
            raise ValueError(f"malformed MP4 box {kind!r} of size {size} at byte {i}")
        boxes.append((kind, data[i:i + size]))
        i += size
    return boxes
