"""The instrument's segmenter: learns labelled toy hearts in seconds, round-trips through its folder, reads
the masks of a phantom store on the canonical grid of its cines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgflowcmr.errors import InputError
from ecgflowcmr.evaluation.segmentation import (
    PIXEL_AREA_MM2,
    PRESETS,
    SegConfig,
    dice_per_class,
    fit_segmenter,
    load_segmenter,
    read_store_masks,
    save_segmenter,
)

SIZE, T = 48, 10


def toy_hearts(n: int, seed: int, frames: int = T) -> tuple[np.ndarray, np.ndarray]:
    """Cines (n, frames, 48, 48) in [0, 1] and masks: a bright LV pool (1) whose radius beats, a dark
    myocardial ring (2), a bright RV (3) on the left, LA (4) and RA (5) below; random position; noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((n, frames, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(16, 22), rng.uniform(26, 30)
        for t in range(frames):
            r = 7 + 2.5 * np.cos(2 * np.pi * t / frames)
            d = np.hypot(yy - cy, xx - cx)
            m = masks[i, t]
            m[(yy > cy + 12) & (yy < cy + 20) & (xx > cx - 3) & (xx < cx + 7)] = 4
            m[(yy > cy + 12) & (yy < cy + 20) & (xx > cx - 16) & (xx < cx - 6)] = 5
            m[(np.abs(yy - cy) < 6) & (xx > cx - r - 13) & (xx < cx - r - 4)] = 3
            m[d < r + 3] = 2
            m[d < r] = 1
    levels = np.array([0.35, 0.9, 0.1, 0.85, 0.7, 0.65], dtype=np.float32)
    cines = levels[masks] + 0.03 * rng.standard_normal(masks.shape).astype(np.float32)
    return np.clip(cines, 0, 1), masks


@pytest.fixture(scope="module")
def trained():
    cines, masks = toy_hearts(6, 0)
    val = toy_hearts(2, 1)
    return fit_segmenter(cines, masks, PRESETS["tiny"], val)


def test_segmenter_learns_the_chambers(trained) -> None:
    seg, report = trained
    assert report.seconds < 60
    assert min(report.val_dice.values()) > 0.7, report.val_dice  # untrained: ≈ 0
    cines, masks = toy_hearts(2, 5)
    areas, feats = seg.analyse(cines)
    assert areas.shape == (2, T, 5) and feats.shape == (2, T, seg.config.widths[-1])
    truth = np.stack([(masks == k).sum(axis=(2, 3)) for k in range(1, 6)], axis=-1) * PIXEL_AREA_MM2
    lv_corr = np.corrcoef(areas[..., 0].ravel(), truth[..., 0].ravel())[0, 1]
    assert lv_corr > 0.9  # the beating LV pool is tracked frame by frame
    np.testing.assert_array_equal(seg.predict(cines).argmax() >= 0, True)


def test_segmenter_round_trips_through_its_folder(trained, tmp_path: Path) -> None:
    seg, _ = trained
    cines, _ = toy_hearts(1, 3)
    save_segmenter(seg, tmp_path / "seg", {"note": {"value": 1, "definition": "test"}})
    again = load_segmenter(tmp_path / "seg")
    np.testing.assert_array_equal(seg.predict(cines), again.predict(cines))
    assert len(again.checksum) == 64 and again.config == seg.config
    (tmp_path / "seg" / "config.json").write_text('{"kind": "something else"}')
    with pytest.raises(InputError, match="not a segmenter config"):
        load_segmenter(tmp_path / "seg")
    with pytest.raises(InputError, match=r"model.safetensors missing"):
        load_segmenter(tmp_path / "nowhere")


def test_dice_and_bad_configs() -> None:
    a = np.array([[0, 1, 1, 2]])
    d = dice_per_class(a, np.array([[0, 1, 2, 2]]))
    assert d["lv_pool"] == pytest.approx(2 / 3) and d["lv_myocardium"] == pytest.approx(2 / 3)
    assert np.isnan(d["la"])
    with pytest.raises(InputError):
        SegConfig(widths=(8,))
    with pytest.raises(InputError):
        SegConfig(steps=0)


def test_store_masks_follow_the_canonical_crop(phantom_store: Path, synthetic_store: Path) -> None:
    from ecgflowcmr.store.prepared import StoreDataset

    masks = read_store_masks(phantom_store, "test", [0, 1])
    cines = np.asarray(StoreDataset(phantom_store, "test", fields=("cine",)).array("cine")[:2], dtype=np.float32)
    assert masks.shape == cines.shape and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1, 2, 3, 4, 5}
    # on the canonical grid the LV blood pool is bright and the myocardium dark, as in the cine itself
    assert cines[masks == 1].mean() > cines[masks == 2].mean() + 40
    with pytest.raises(InputError, match="does not record its manifest"):
        read_store_masks(synthetic_store, "test")
