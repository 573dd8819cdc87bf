"""Cine frames → video files: MP4 (H.264 through imageio-ffmpeg), GIF (a shared palette), PNG (frame 0);
every file written under a temporary name and renamed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgflowcmr.errors import InputError

SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".png")
_CURSOR = np.array([255, 84, 84], dtype=np.float32)
"""The ECG cursor's colour (``render``): every GIF palette keeps it exactly."""


def write_video(frames01: np.ndarray, out: Path, fps: float = 25.0) -> Path:
    """Write one cine (T, H, W) in [0, 1] as .mp4 or .gif (.png: frame 0), upscaled ×3 (nearest), atomically."""
    out = Path(out)
    _check_out(out)
    frames01 = np.asarray(frames01, dtype=np.float32)
    if frames01.ndim != 3:
        raise ValueError(f"frames01 must be (T, H, W), got shape {frames01.shape}")
    gray = _to_uint8(frames01).repeat(3, axis=1).repeat(3, axis=2)
    t, h, w = gray.shape
    h16, w16 = -(-h // 16) * 16, -(-w // 16) * 16  # H.264 wants multiples of 16: pad with black
    rgb = np.zeros((t, h16, w16, 3), dtype=np.uint8)
    rgb[:, :h, :w] = gray[..., None]
    _save(rgb, out, fps)
    return out


def _to_uint8(frames01: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(frames01, dtype=np.float32), nan=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in SUFFIXES:
        raise InputError(out, f"output must end in {', '.join(SUFFIXES)}")


def _save(frames: np.ndarray, out: Path, fps: float) -> None:
    """(T, H, W, 3) uint8 → .mp4 (H.264), .gif (one fixed palette) or .png (frame 0), atomically."""
    from ecgflowcmr.atomic import atomic_file

    if not fps > 0:
        raise InputError("--fps", f"must be positive, got {fps}")
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    with atomic_file(out) as tmp:
        if suffix == ".mp4":
            _save_mp4(frames, tmp, fps)
        elif suffix == ".gif":
            _save_gif(frames, tmp, fps)
        else:
            from PIL import Image

            Image.fromarray(frames[0]).save(tmp, format="PNG")


def _save_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import imageio_ffmpeg

    _, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", quality=8,
                                         macro_block_size=16, ffmpeg_log_level="error",
                                         output_params=["-preset", "veryfast", "-movflags", "+faststart"])
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _save_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    """One palette for all frames, no dithering, so nothing flickers: gray pixels map to a gray ramp (256
    levels, exact, when the frames are all gray; else 192), the few coloured ones (ECG, cursor, text) to
    the nearest of up to 64 colours taken from the first frame.

    Pillow merges consecutive identical frames (their durations add), so a static cine gives fewer frames.
    """
    from PIL import Image

    first = frames[0].reshape(-1, 3)
    coloured = first[(first[:, 0] != first[:, 1]) | (first[:, 1] != first[:, 2])]
    colours = np.zeros((0, 3), dtype=np.uint8)
    if len(coloured):
        sample = Image.fromarray(np.concatenate([coloured, _CURSOR[None].astype(np.uint8)])[None])
        colours = np.asarray(sample.quantize(colors=63, method=Image.Quantize.MEDIANCUT).getpalette(), np.uint8)
        colours = np.unique(np.concatenate([colours.reshape(-1, 3)[:63], _CURSOR[None].astype(np.uint8)]), axis=0)
    n_gray = 256 - len(colours)
    levels = np.linspace(0, 255, n_gray)
    gray_lut = np.abs(np.arange(256)[:, None] - levels[None]).argmin(axis=1).astype(np.uint8)
    palette = np.concatenate([np.repeat(levels.round().astype(np.uint8)[:, None], 3, axis=1), colours])
    nearest: dict[int, int] = {}

    def quantize(codes: np.ndarray) -> np.ndarray:  # (M,) 0xRRGGBB → (M,) palette indices
        index = gray_lut[codes >> 16]
        coloured = codes != (codes >> 16) * 0x010101
        if coloured.any():
            unique, inverse = np.unique(codes[coloured], return_inverse=True)
            new = np.array([c for c in unique.tolist() if c not in nearest], dtype=np.int64)
            if new.size:
                rgb = np.stack([new >> 16, (new >> 8) & 255, new & 255], axis=1)
                dist = ((rgb[:, None, :] - palette[None].astype(np.int64)) ** 2).sum(axis=2)
                nearest.update(zip(new.tolist(), dist.argmin(axis=1).tolist()))
            index[coloured] = np.array([nearest[c] for c in unique.tolist()], dtype=np.uint8)[inverse.ravel()]
        return index

    def codes_of(pixels: np.ndarray) -> np.ndarray:  # (M, 3) uint8 → (M,) 0xRRGGBB
        rgb = pixels.astype(np.int64)
        return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]

    ref = frames[0]
    reference = quantize(codes_of(ref.reshape(-1, 3))).reshape(ref.shape[:2])
    flat_palette = palette.flatten().tolist()
    images = []
    for frame in frames:  # only what differs from frame 0 (panels, cursor, caption) is quantized again
        changed = (frame[..., 0] != ref[..., 0]) | (frame[..., 1] != ref[..., 1]) | (frame[..., 2] != ref[..., 2])
        index = reference.copy()
        index[changed] = quantize(codes_of(frame[changed]))
        img = Image.fromarray(index, mode="P")
        img.putpalette(flat_palette)
        images.append(img)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0, optimize=False)
