"""Looking at data: cines side by side with the ECG beneath (MP4/GIF/PNG), a 12-lead ECG on paper (PNG).

Video frames are composed with numpy: the static parts (titles, ECG traces, grid) are drawn once with
matplotlib (Agg, no pyplot state), then each frame pastes the cine panels and draws the ECG cursor.
Frame t of a cine sits at R + t/T·(R_next − R) of one R-R interval of the ECG (frame 0 = R-peak = ED),
the interval nearest the middle of the record; the cursor marks that time on lead II and on the twelve
single-beat panels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgflowcmr.canonical import FS, LEADS
from ecgflowcmr.errors import InputError

PANEL: int = 288
"""Side of one cine panel in the video (pixels; 96 × 3)."""
SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".png")

_BG = "#101114"
_TEXT = "#e8e8ea"
_TRACE = "#7ee0a1"
_GRID = "#1d3326"
_BAND = "#262b4a"
_CURSOR = np.array([255, 84, 84], dtype=np.float32)
_PAD, _TITLE_H, _FOOTER_H = 16, 30, 26
_STRIP_H, _BEATS_H = 130, 230


# --------------------------------------------------------------------------- public API


def show(files: list[Path], out: Path, ecg: Path | None = None, fps: float = 25.0,
         labels: list[str] | None = None) -> Path:
    """``ecgflowcmr show``: cines (any reader format) side by side as MP4/GIF (PNG: frame 0), the ECG
    (``ecg`` or one of ``files``) beneath with a moving cursor; a single ECG alone → a 12-lead PNG.
    """
    from ecgflowcmr.io.formats import is_ecg, sniff

    out = Path(out)
    cine_paths, ecg_paths = [], []
    for f in files:
        (ecg_paths if is_ecg(sniff(f)) else cine_paths).append(Path(f))
    if ecg is not None:
        ecg_paths.append(Path(ecg))
    if len(ecg_paths) > 1:
        raise InputError(ecg_paths[1], f"show draws one ECG, got {len(ecg_paths)}")
    _check_out(out)
    if not cine_paths:
        if not ecg_paths:
            raise InputError("files", "nothing to show")
        if out.suffix.lower() != ".png":
            raise InputError(out, "an ECG alone renders as a .png")
        from ecgflowcmr.io.ecg import read_ecg

        record = read_ecg(ecg_paths[0])
        return render_ecg_png(record.signal, out, title=_display_name(ecg_paths[0]))
    if labels is not None and len(labels) != len(cine_paths):
        raise InputError("--labels", f"{len(labels)} labels for {len(cine_paths)} cines")
    from ecgflowcmr.io.cmr import read_cine

    cines = [read_cine(p).frames01 for p in cine_paths]
    signal = rpeaks = None
    if ecg_paths:
        from ecgflowcmr.io.ecg import read_ecg

        record = read_ecg(ecg_paths[0])
        signal, rpeaks = record.signal, record.rpeaks
    titles = labels if labels is not None else _default_titles(cine_paths)
    return render_cine_video(cines, out, ecg_signal=signal, titles=titles, fps=fps, rpeaks=rpeaks)


def render_cine_video(cines: list[np.ndarray], out: Path, ecg_signal: np.ndarray | None = None,
                      titles: list[str] | None = None, fps: float = 25.0,
                      cycle: tuple[int, int] | None = None, rpeaks: np.ndarray | None = None) -> Path:
    """Cines side by side, optionally the ECG beneath with a cursor at each frame's time; written atomically.

    ``cines``: each (T_i, H, W) float in [0, 1] (frame t of the longest shows frame t·T_i/T of each).
    ``ecg_signal``: (12, N) mV at 500 Hz in ``LEADS`` order. ``cycle``: (R, R_next) sample indices of the
    R-R interval the cine spans; default: the one nearest the record's middle between ``rpeaks`` (the ECG's
    R-peaks as ``read_ecg`` carries them; found with ``signal.phase.find_rpeaks`` when not given). ``out``: .mp4,
    .gif or .png (frame 0 only). Returns ``out``.
    """
    out = Path(out)
    _check_out(out)
    if not cines:
        raise ValueError("render_cine_video needs at least one cine")
    cines = [np.asarray(c, dtype=np.float32) for c in cines]
    for c in cines:
        if c.ndim != 3:
            raise ValueError(f"a cine must be (T, H, W), got shape {c.shape}")
    if titles is not None and len(titles) != len(cines):
        raise ValueError(f"{len(titles)} titles for {len(cines)} cines")
    n_frames = max(c.shape[0] for c in cines)
    layout = _layout(len(cines), titles, ecg_signal, cycle, n_frames, rpeaks)
    panels = [_panel_frames(c) for c in cines]
    n_out = 1 if out.suffix.lower() == ".png" else n_frames  # a still: frame 0 (ED) only
    frames = np.empty((n_out, *layout.background.shape), dtype=np.uint8)
    for t in range(n_out):
        frame = frames[t]
        frame[:] = layout.background
        for (row, col), cine in zip(layout.panels, panels):
            img = cine[t * cine.shape[0] // n_frames]
            h, w = img.shape
            r, c = row + (PANEL - h) // 2, col + (PANEL - w) // 2
            frame[r:r + h, c:c + w] = img[:, :, None]
        for xs, r0, r1 in layout.cursors:
            x = int(xs[t])
            block = frame[r0:r1, x:x + 2].astype(np.float32)
            frame[r0:r1, x:x + 2] = (0.15 * block + 0.85 * _CURSOR).astype(np.uint8)
    _caption(frames, layout)
    _save(frames, out, fps)
    return out


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


def render_ecg_png(signal: np.ndarray, out: Path, title: str | None = None, fs: float = FS) -> Path:
    """A 12-lead ECG as PNG in the standard layout: 3 × 4 leads of 2.5 s plus a 10 s lead II rhythm strip,
    25 mm/s and 10 mm/mV on a 1 mm / 5 mm grid, with a 1 mV calibration pulse. ``signal``: (12, N) mV.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    out = Path(out)
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != 12:
        raise ValueError(f"signal must be (12, N) mV, got shape {signal.shape}")
    seconds = signal.shape[1] / fs
    mm_s, mm_mv, row_mm, cal_mm = 25.0, 10.0, 32.0, 10.0
    width_mm = cal_mm + seconds * mm_s
    height_mm = 4 * row_mm
    grid = [("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6")]
    fig = Figure(figsize=(width_mm / 25.4 * 1.05 + 0.3, height_mm / 25.4 * 1.05 + 0.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.91))
    ax.set_xlim(0, width_mm)
    ax.set_ylim(0, height_mm)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.add_patch(_rect(0, 0, width_mm, height_mm, "#fff7f7"))
    for step, colour, lw in ((1.0, "#f7d6d6", 0.25), (5.0, "#e9a6a6", 0.6)):  # 1 mm and 5 mm squares
        xs, ys = np.arange(0, width_mm + 0.01, step), np.arange(0, height_mm + 0.01, step)
        lines = [[(x, 0), (x, height_mm)] for x in xs] + [[(0, y), (width_mm, y)] for y in ys]
        ax.add_collection(LineCollection(lines, colors=colour, linewidths=lw, zorder=1 + step / 5))
    segment = signal.shape[1] // 4
    rows = [*grid, ("II",)]
    for r, leads in enumerate(rows):
        base = height_mm - (r + 0.5) * row_mm
        ax.plot([1, 3, 3, 7, 7, 9], base + np.array([0, 0, 1, 1, 0, 0]) * mm_mv, color="k", lw=0.8, zorder=3)
        for c, lead in enumerate(leads):
            x = signal[LEADS.index(lead)]
            lo, hi = (0, x.size) if len(leads) == 1 else (c * segment, (c + 1) * segment)
            ax.plot(cal_mm + np.arange(lo, hi) / fs * mm_s, base + (x[lo:hi] - np.median(x[lo:hi])) * mm_mv,
                    color="k", lw=0.7, zorder=3)
            x0 = cal_mm + lo / fs * mm_s
            ax.text(x0 + 1.5, base + 0.3 * row_mm, lead, fontsize=8, zorder=4,
                    bbox={"facecolor": "#fff7f7", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
            if c > 0:
                ax.plot([x0, x0], [base - 3, base + 3], color="k", lw=0.8, zorder=3)
    fig.suptitle(f"{title + '   ' if title else ''}25 mm/s   10 mm/mV   {seconds:g} s at {fs:g} Hz",
                 x=0.01, ha="left", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ecgflowcmr.atomic import atomic_file

    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", facecolor="white")
    return out


# --------------------------------------------------------------------------- layout (drawn once)


@dataclass
class _Layout:
    background: np.ndarray
    """(H, W, 3) uint8, everything static."""
    panels: list[tuple[int, int]]
    """Top-left (row, col) of each cine panel."""
    cursors: list[tuple[np.ndarray, int, int]]
    """Per ECG axes: cursor column per frame (T,), first row, last row (exclusive)."""
    captions: list[str]
    """Per frame text under the panels."""
    caption_xy: tuple[int, int]


def _layout(n_cines: int, titles: list[str] | None, signal: np.ndarray | None,
            cycle: tuple[int, int] | None, n_frames: int, rpeaks: np.ndarray | None = None) -> _Layout:
    """Draw the static frame once: one matplotlib axes whose data coordinates are the frame's pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gap = 12
    cines_w = n_cines * PANEL + (n_cines - 1) * gap
    width = max(cines_w + 2 * _PAD, 960 if signal is not None else 0)
    height = _PAD + (_TITLE_H if titles else 0) + PANEL + _FOOTER_H + (_STRIP_H + _BEATS_H if signal is not None else 0)
    width, height = -(-width // 16) * 16, -(-height // 16) * 16
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor=_BG)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y down, like image rows
    ax.axis("off")
    top = _PAD + (_TITLE_H if titles else 0)
    left = (width - cines_w) // 2
    panels = [(top, left + i * (PANEL + gap)) for i in range(n_cines)]
    for i, (row, col) in enumerate(panels):
        if titles:
            ax.text(col + PANEL / 2, row - 8, titles[i], color=_TEXT, ha="center", va="bottom", fontsize=12)
    captions = [f"frame {t + 1}/{n_frames}" for t in range(n_frames)]
    cursors: list[tuple[np.ndarray, int, int]] = []
    if signal is not None:
        signal = np.asarray(signal, dtype=np.float64)
        if signal.ndim != 2 or signal.shape[0] != 12:
            raise ValueError(f"ecg_signal must be (12, N) mV, got shape {signal.shape}")
        r0, r1, note = _choose_cycle(signal, cycle, rpeaks)
        times = (r0 + np.arange(n_frames) / n_frames * (r1 - r0)) / FS  # s, frame t ↔ R + t/T of R-R
        captions = [f"frame {t + 1}/{n_frames}   t = {1000 * (times[t] - times[0]):.0f} ms after R   "
                    f"R-R {1000 * (r1 - r0) / FS:.0f} ms{note}" for t in range(n_frames)]
        for x, y, w, h, (ta, tb) in _draw_ecg(ax, signal, r0, r1, top + PANEL + _FOOTER_H, width):
            xs = x + (times - ta) / (tb - ta) * w
            cursors.append((np.clip(np.round(xs - 1), 0, width - 2).astype(int), int(y), int(y + h)))
    fig.canvas.draw()
    background = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    for row, col in panels:
        background[row:row + PANEL, col:col + PANEL] = 0
    return _Layout(background, panels, cursors, captions, (left, top + PANEL + 5))


def _draw_ecg(ax, signal: np.ndarray, r0: int, r1: int, top: int, width: int) -> list:
    """Lead II rhythm strip (whole record, the cycle shaded) and 12 single-beat panels, in pixel
    coordinates; returns each panel's (x, y, w, h, (t_start_s, t_end_s)).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    n = signal.shape[1]

    def panel(x: float, y: float, w: float, h: float, t0: int, t1: int, trace: np.ndarray, label: str,
              lim: tuple[float, float]) -> tuple:
        ta, tb = t0 / FS, (t1 - 1) / FS

        def px(t: np.ndarray) -> np.ndarray:
            return x + (t - ta) / (tb - ta) * w

        def py(v: np.ndarray) -> np.ndarray:
            return y + h - (np.clip(v, *lim) - lim[0]) / (lim[1] - lim[0]) * h

        grid = [[(px(g), y), (px(g), y + h)] for g in np.arange(np.ceil(ta / 0.2) * 0.2, tb, 0.2)]
        grid += [[(x, py(g)), (x + w, py(g))] for g in np.arange(np.ceil(lim[0] / 0.5) * 0.5, lim[1], 0.5)]
        ax.add_collection(LineCollection(grid, colors=_GRID, linewidths=0.6, zorder=0))
        ax.plot(px(np.arange(t0, t1) / FS), py(trace), color=_TRACE, lw=1.0, zorder=2)
        ax.text(x + 4, y + 3, label, color=_TEXT, fontsize=9, va="top", zorder=3,
                bbox={"facecolor": _BG, "edgecolor": "none", "pad": 1.5, "alpha": 0.85})
        return x, y, w, h, (ta, tb)

    lead_ii = signal[LEADS.index("II")] - np.median(signal[LEADS.index("II")])
    sx, sw, sh = _PAD, width - 2 * _PAD, _STRIP_H - 22
    ax.add_patch(Rectangle((sx + r0 / (n - 1) * sw, top), (r1 - r0) / (n - 1) * sw, sh, color=_BAND, zorder=1))
    boxes = [panel(sx, top, sw, sh, 0, n, lead_ii, "II", _limits(lead_ii))]
    ax.text(sx + sw, top + sh + 4, f"{n / FS:g} s, lead II (0.2 s · 0.5 mV grid); shaded: the R-R interval "
            "the cine spans",
            color="#9a9aa2", fontsize=8, ha="right", va="top")
    margin = int(0.12 * (r1 - r0))
    b0, b1 = max(0, r0 - margin), min(n, r1 + margin)
    beats = signal[:, b0:b1] - np.median(signal[:, b0:b1], axis=1, keepdims=True)
    lim = _limits(beats)  # one mV scale for all twelve leads, as on paper
    cols, rows, gap = 6, 2, 8
    w = (width - 2 * _PAD - (cols - 1) * gap) / cols
    h = (_BEATS_H - 12 - (rows - 1) * gap) / rows
    for k, lead in enumerate(LEADS):  # limb leads on the first row, chest leads on the second
        x, y = _PAD + (k % cols) * (w + gap), top + _STRIP_H + (k // cols) * (h + gap)
        boxes.append(panel(x, y, w, h, b0, b1, beats[k], lead, lim))
    return boxes


def _limits(x: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.percentile(x, 0.2)), float(np.percentile(x, 99.8))
    span = max(hi - lo, 0.5)
    return lo - 0.12 * span, hi + 0.12 * span


def _choose_cycle(signal: np.ndarray, cycle: tuple[int, int] | None,
                  rpeaks: np.ndarray | None) -> tuple[int, int, str]:
    """(R, R_next) sample indices and a note for the caption."""
    n = signal.shape[1]
    if cycle is not None:
        r0, r1 = int(cycle[0]), int(cycle[1])
        if not 0 <= r0 < r1 <= n:
            raise ValueError(f"cycle {cycle} is not inside the record of {n} samples")
        return r0, r1, ""
    if rpeaks is None:
        from ecgflowcmr.signal.phase import find_rpeaks

        rpeaks = find_rpeaks(signal)
    peaks = np.asarray(rpeaks, dtype=np.int64)
    if len(peaks) < 2:
        mid = n // 2
        return max(0, mid - FS // 2), min(n, mid + FS // 2), "   (no R-peaks found: a 1 s window)"
    pairs = list(itertools.pairwise(peaks))
    r0, r1 = min(pairs, key=lambda p: abs((p[0] + p[1]) / 2 - n / 2))
    return int(r0), int(r1), ""


# --------------------------------------------------------------------------- frames and files


def _panel_frames(cine01: np.ndarray) -> np.ndarray:
    """(T, h, w) in [0, 1] → uint8 (T, h', w') fitted into PANEL × PANEL (bilinear)."""
    from PIL import Image

    _, h, w = cine01.shape
    scale = PANEL / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    codes = _to_uint8(cine01)
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in codes])


def _caption(frames: np.ndarray, layout: _Layout) -> None:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    for frame, text in zip(frames, layout.captions):
        x, y = layout.caption_xy
        h = _FOOTER_H - 6
        img = Image.fromarray(frame[y:y + h])
        ImageDraw.Draw(img).text((x, 0), text, fill=(200, 200, 206), font=font)
        frame[y:y + h] = np.asarray(img)


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


def _display_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".npz", ".zip", ".hea", ".dat", ".xml", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _default_titles(paths: list[Path]) -> list[str]:
    """File names without suffix; with the parent folder when names repeat (sub1/la_4ch, sub2/la_4ch)."""
    names = [_display_name(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{n}" for p, n in zip(paths, names)]
    return names


def _rect(x: float, y: float, w: float, h: float, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=colour, edgecolor="none", zorder=0)
