"""The visualiser: videos with the right frames, a cursor at the right time, PNGs, and ``ecgflowcmr show``."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import synthetic_pair
from ecgflowcmr.cli import main
from ecgflowcmr.io.cmr import write_nifti_cine
from ecgflowcmr.io.ecg import write_wfdb
from ecgflowcmr.viz import render as viz
from ecgflowcmr.viz.video import write_video


@pytest.fixture(scope="module")
def pair():
    ecg, _, cine = synthetic_pair(np.random.default_rng(3))
    return ecg, (cine + 1) / 2  # cine in [0, 1]


def cursor_columns(frame: np.ndarray, rows: slice) -> np.ndarray:
    """Columns of the red cursor inside a band of rows."""
    band = frame[rows].astype(int)
    red = (band[..., 0] > 200) & (band[..., 1] < 140) & (band[..., 2] < 140)
    return np.nonzero(red.any(axis=0))[0]


def test_gif_and_mp4_have_one_frame_per_cine_frame(tmp_path, pair):
    ecg, cine = pair
    cine, cine2 = cine[:16], cine[::-1][:8].copy()  # few frames keep the test fast; T is the longest cine's
    gif = viz.render_cine_video([cine, cine2], tmp_path / "v.gif", ecg_signal=ecg, titles=["real", "generated"],
                                cycle=(1000, 1400))
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 16 and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    mp4 = viz.render_cine_video([cine], tmp_path / "v.mp4", ecg_signal=ecg, fps=10, cycle=(1000, 1400))
    video = iio.imread(mp4, index=None, plugin="FFMPEG")
    assert video.shape[0] == 16
    assert iio.immeta(mp4, plugin="FFMPEG")["fps"] == pytest.approx(10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4"]  # no temporary files left


def test_cursor_sits_at_each_frame_time(tmp_path, pair):
    ecg, cine = pair
    cine = cine[::5]  # 10 frames
    out = viz.render_cine_video([cine], tmp_path / "v.gif", ecg_signal=ecg, cycle=(1000, 1500))
    frames = iio.imread(out, index=None)[..., :3]
    layout = viz._layout(1, None, ecg, (1000, 1500), 10)
    strip_x, strip_w = viz._PAD, frames.shape[2] - 2 * viz._PAD
    top = viz._PAD + viz.PANEL + viz._FOOTER_H
    rows = slice(top + 5, top + 40)
    for t in (0, 5, 9):
        time_s = (1000 + t / 10 * 500) / viz.FS
        expected = strip_x + time_s / (4999 / viz.FS) * strip_w
        cols = cursor_columns(frames[t], rows)
        assert cols.size and abs(cols.mean() - expected) < 2.0, (t, cols, expected)
        assert abs(layout.cursors[0][0][t] + 1 - expected) < 1.0
    # the single-beat panels' cursors move across their own panel in the same frame order
    beat_rows = slice(top + viz._STRIP_H + 10, top + viz._STRIP_H + 60)
    first = cursor_columns(frames[0], beat_rows)
    last = cursor_columns(frames[9], beat_rows)
    assert first.size >= 6 and last.size >= 6 and last.min() > first.min()


def test_video_without_ecg_and_still_png(tmp_path, pair):
    _, cine = pair
    png = viz.render_cine_video([cine, cine, cine], tmp_path / "still.png", titles=["a", "b", "c"])
    img = iio.imread(png)
    assert img.ndim == 3 and img.shape[1] >= 3 * viz.PANEL
    gif = write_video(cine, tmp_path / "one.gif", fps=20)
    frames = iio.imread(gif, index=None)
    assert frames.shape[:3] == (50, 288, 288)
    gray = frames if frames.ndim == 3 else frames[..., 0]
    np.testing.assert_allclose(gray[7, ::3, ::3] / 255.0, cine[7], atol=0.51 / 255)  # 256 exact gray levels
    mp4 = write_video(cine[:10], tmp_path / "one.mp4")
    assert iio.imread(mp4, index=None, plugin="FFMPEG").shape[0] == 10


def test_ecg_png(tmp_path, pair):
    ecg, _ = pair
    out = viz.render_ecg_png(ecg, tmp_path / "ecg.png", title="subject 1")
    img = iio.imread(out)
    assert img.shape[1] > img.shape[0] > 500
    dark = (img[..., :3].astype(int).sum(axis=2) < 150).mean()
    assert 0.005 < dark < 0.2  # traces drawn, not a blank or black page


def test_show_cli(tmp_path, pair, capsys):
    ecg, cine = pair
    write_wfdb(tmp_path / "rec", ecg)
    big = np.zeros((50, 128, 128), np.float32)
    big[:, 16:112, 16:112] = cine
    write_nifti_cine(tmp_path / "a.nii.gz", big, (1.8, 1.8), 0.02)
    write_nifti_cine(tmp_path / "b.nii.gz", big[::-1], (1.8, 1.8), 0.02)
    out = tmp_path / "out" / "pair.gif"
    rc = main(["show", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "--ecg", str(tmp_path / "rec.hea"),
               "--out", str(out), "--labels", "real", "generated", "--fps", "20"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    assert iio.imread(out, index=None).shape[0] == 50
    # an ECG given among the files is drawn beneath, not read as a cine (a .png is the still of frame 0)
    assert main(["show", str(tmp_path / "a.nii.gz"), str(tmp_path / "rec.hea"), "--out", str(tmp_path / "c.png")]) == 0
    still = iio.imread(tmp_path / "c.png")
    assert still.shape[0] > viz.PANEL + viz._STRIP_H and cursor_columns(still, slice(None)).size > 0
    assert main(["show", str(tmp_path / "rec.hea"), "--out", str(tmp_path / "ecg.png")]) == 0
    assert iio.imread(tmp_path / "ecg.png").ndim == 3


@pytest.mark.parametrize("args, message", [
    (["{rec}", "--out", "{tmp}/x.mp4"], "an ECG alone renders as a .png"),
    (["{cine}", "--out", "{tmp}/x.avi"], "output must end in"),
    (["{cine}", "--out", "{tmp}/x.gif", "--labels", "a", "b"], "2 labels for 1 cines"),
    (["{cine}", "{rec}", "--ecg", "{rec}", "--out", "{tmp}/x.gif"], "show draws one ECG"),
])
def test_show_refuses_bad_requests(tmp_path, pair, capsys, args, message):
    ecg, cine = pair
    write_wfdb(tmp_path / "rec", ecg)
    write_nifti_cine(tmp_path / "c.nii.gz", cine)
    subs = {"rec": str(tmp_path / "rec.hea"), "cine": str(tmp_path / "c.nii.gz"), "tmp": str(tmp_path)}
    assert main(["show", *(a.format(**subs) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
