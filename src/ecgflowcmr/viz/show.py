"""``ecgflowcmr show``: cine and ECG files → a video of the cines side by side with the ECG beneath, or a
12-lead PNG of an ECG alone."""

from __future__ import annotations

from pathlib import Path

from ecgflowcmr.errors import InputError
from ecgflowcmr.viz.render import render_cine_video, render_ecg_png
from ecgflowcmr.viz.video import _check_out


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
