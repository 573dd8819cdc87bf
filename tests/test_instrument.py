"""The instrument's measures and scores on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ecgflowcmr.evaluation.instrument import nearest_by_cosine, noise_seed_summary
from ecgflowcmr.evaluation.readout import (
    MEASURES,
    agreement,
    chamber_measures,
    contraction_curve,
    identification,
    real_vs_generated_auc,
    ridge_predict,
    sharpness,
)

T = 50


def lv_areas(es: float, ed_area: float, fac: float, n_chambers: int = 5) -> np.ndarray:
    """Areas (T, 5) mm²: a smooth LV curve from ``ed_area`` at frame 0 down to (1 − fac)·ed_area at ``es``
    and back; myocardium constant 800; RV beating with FAC 0.4; atria constant."""
    t = np.arange(T, dtype=np.float64)
    phase = np.where(t <= es, t / es * np.pi, np.pi + (t - es) / (T - es) * np.pi)
    g = 0.5 * (1 - np.cos(phase))  # 0 at ED, 1 at ES, 0 at the next R-peak
    areas = np.empty((T, n_chambers))
    areas[:, 0] = ed_area * (1 - fac * g)
    areas[:, 1] = 800.0
    areas[:, 2] = 1500 * (1 - 0.4 * g)
    areas[:, 3:] = 600.0
    return areas


def test_chamber_measures_of_known_curves() -> None:
    areas = np.stack([lv_areas(18, 2000, 0.5), lv_areas(25, 1500, 0.3)])
    m = chamber_measures(areas)
    assert set(m) == set(MEASURES)
    np.testing.assert_allclose(m["lv_ed_area_mm2"], [2000, 1500], rtol=0.01)
    np.testing.assert_allclose(m["lv_es_area_mm2"], [1000, 1050], rtol=0.01)
    np.testing.assert_allclose(m["lv_fac"], [0.5, 0.3], atol=0.01)
    np.testing.assert_allclose(m["rv_fac"], [0.4, 0.4], atol=0.01)
    np.testing.assert_allclose(m["lv_myo_area_mm2"], [800, 800])
    np.testing.assert_allclose(m["es_frame"], [18, 25], atol=1.0)
    assert contraction_curve(areas).argmax(axis=1).tolist() == [18, 25]


def test_agreement_identity_constant_and_noise() -> None:
    rng = np.random.default_rng(0)
    real = rng.standard_normal(40)
    assert agreement(real, real) == {"spearman": pytest.approx(1.0), "r2": pytest.approx(1.0), "mae": 0.0}
    const = agreement(np.full(40, real.mean()), real)
    assert const["spearman"] is None and const["r2"] == pytest.approx(0.0, abs=1e-12)
    flipped = agreement(-real, real)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["r2"] < -2


def test_identification_and_nearest() -> None:
    rng = np.random.default_rng(1)
    real = {m: rng.standard_normal(20) for m in MEASURES}
    assert identification(real, real) == pytest.approx(1.0)
    other = {m: rng.standard_normal(20) for m in MEASURES}
    assert 0.3 < identification(other, real) < 0.7
    pool = np.eye(4)
    assert nearest_by_cosine(np.array([[0, 2.0, 0.1, 0], [0, 0, 0, -1.0]]), pool).tolist() == [1, 0]


def test_ridge_recovers_a_linear_target_and_auc_separates() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 10))
    y = x @ rng.standard_normal(10)
    pred = ridge_predict(x[:150], y[:150], x[150:])
    assert np.corrcoef(pred, y[150:])[0, 1] > 0.99
    same = real_vs_generated_auc(rng.standard_normal((40, 5)), rng.standard_normal((40, 5)))
    apart = real_vs_generated_auc(rng.standard_normal((40, 5)), rng.standard_normal((40, 5)) + 3)
    assert abs(same - 0.5) < 0.25 and apart > 0.95


def test_noise_seed_summary_spreads_and_shares() -> None:
    """Mean, sample sd and range per number over seeds; shares per seed; a seed without a value leaves the
    summary of that number empty instead of averaging what is left; noise-free numbers are not repeated."""
    h0 = {"fid_cmr_generated": 0.010, "fid_cmr_real_floor": 0.002, "es_frame_mae_own_ecg": 1.0,
          "es_frame_mae_swapped_ecg": 2.0, "lv_fac_spearman_generated": 0.4}
    h1 = {**h0, "fid_cmr_generated": 0.006, "es_frame_mae_own_ecg": 1.6, "lv_fac_spearman_generated": None}
    summary = noise_seed_summary([3, 4], [h0, h1])
    rows = summary["measures"]
    assert summary["seeds"] == [3, 4] and "seed 3's" in summary["definition"]
    assert "fid_cmr_real_floor" not in rows
    fid = rows["fid_cmr_generated"]
    assert fid["values"] == [0.010, 0.006] and fid["mean"] == pytest.approx(0.008)
    assert fid["sd"] == pytest.approx(np.std([0.010, 0.006], ddof=1)) and (fid["min"], fid["max"]) == (0.006, 0.010)
    assert rows["fid_cmr_over_floor"]["values"] == pytest.approx([5.0, 3.0])
    assert rows["es_swapped_over_own"]["values"] == pytest.approx([2.0, 1.25])
    assert rows["lv_fac_spearman_generated"]["mean"] is None and rows["lv_fac_share_of_ecg_ceiling"]["mean"] is None
    assert rows["diagnosis_real_trained_share_of_real"]["values"] == [None, None]  # not in these headlines
    one = noise_seed_summary([0], [h0])["measures"]["fid_cmr_generated"]
    assert one["mean"] == 0.010 and one["sd"] is None


def test_sharpness_falls_with_blur() -> None:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    x = (rng.random((2, 3, 32, 32)) > 0.5).astype(np.float32)
    assert sharpness(gaussian_filter(x, sigma=(0, 0, 2, 2))) < 0.3 * sharpness(x)


def _shard_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from ecgflowcmr.evaluation.sharding import StoreRows, shard_map

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    items = np.arange(7.0)[:, None] * np.ones((1, 3))
    computed: list[float] = []
    read: list[int] = []

    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        computed.extend(x[:, 0].tolist())
        return x * 10, x[:, :1]

    def convert(rows: np.ndarray) -> np.ndarray:
        read.extend(rows[:, 0].astype(int).tolist())
        return rows.astype(np.float32) / 2

    seen = shard_map(fn, items)
    single = shard_map(lambda x: x.sum(axis=1), items)
    aligned = shard_map(lambda x: x.astype(np.int64), StoreRows(np.arange(10).repeat(2).reshape(10, 2), convert), align=4)
    if rank == 0:
        np.save(f"{out}-0.npy", np.concatenate([seen[0].ravel(), seen[1].ravel(), single, aligned.ravel()]))
    else:
        assert seen is None and single is None and aligned is None
    np.save(f"{out}-{rank}-computed.npy", np.array(computed))
    np.save(f"{out}-{rank}-read.npy", np.array(read))
    dist.destroy_process_group()


def test_shard_map_gathers_the_ranks_blocks_on_rank_0(tmp_path) -> None:
    import torch.multiprocessing as mp

    from ecgflowcmr.evaluation.sharding import block, shard_map

    items = np.arange(7.0)[:, None] * np.ones((1, 3))
    expected = np.concatenate([(items * 10).ravel(), items[:, :1].ravel(), items.sum(axis=1),
                               (np.arange(10).repeat(2) // 2)])
    alone = shard_map(lambda x: (x * 10, x[:, :1]), items)  # no process group: a plain call
    np.testing.assert_array_equal(np.concatenate([alone[0].ravel(), alone[1].ravel()]), expected[:28])
    assert [block(10, 4, r, 2) for r in range(2)] == [slice(0, 4), slice(4, 10)]  # whole units of 4: 1 + 2
    assert [block(2, 4, r, 2) for r in range(2)] == [slice(0, 0), slice(0, 2)]
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_shard_worker, args=(init, str(tmp_path / "out")), nprocs=2, join=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out-0.npy"), expected)  # rank 0 holds the whole
    # rank r computed its block of items, each item once over the ranks; it read only its block of the rows
    np.testing.assert_array_equal(np.load(tmp_path / "out-0-computed.npy"), [0, 1, 2])
    np.testing.assert_array_equal(np.load(tmp_path / "out-1-computed.npy"), [3, 4, 5, 6])
    np.testing.assert_array_equal(np.load(tmp_path / "out-0-read.npy"), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.load(tmp_path / "out-1-read.npy"), [4, 5, 6, 7, 8, 9])


def test_shard_map_alone_runs_pieces_of_whole_units_and_reads_lazy_rows_a_piece_at_a_time() -> None:
    from ecgflowcmr.evaluation.sharding import PIECE, StoreRows, shard_map

    stored = np.arange(2 * PIECE + 22, dtype=np.uint8)[:, None].repeat(3, axis=1)
    reads: list[int] = []
    calls: list[int] = []

    def convert(rows: np.ndarray) -> np.ndarray:
        reads.append(len(rows))
        return rows.astype(np.float32) * 2

    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(x))
        return x.sum(axis=1), x[:, :2].astype(np.int64)

    total, first = shard_map(fn, StoreRows(stored, convert), align=24)
    np.testing.assert_array_equal(total, stored.astype(np.float32).sum(axis=1) * 2)
    np.testing.assert_array_equal(first, stored[:, :2].astype(np.int64) * 2)
    piece = 24 * max(1, PIECE // 24)
    assert calls == reads and all(c % 24 == 0 for c in calls[:-1]) and max(calls) == piece
    assert sum(calls) == len(stored) and len(calls) > 1


def test_an_untrained_segmenter_is_flagged(tmp_path) -> None:
    from ecgflowcmr.evaluation.instrument import MIN_DICE, _validation_dice
    from ecgflowcmr.evaluation.segmentation import (
        PRESETS,
        SegmentationNet,
        Segmenter,
        load_segmenter,
        save_segmenter,
    )

    save_segmenter(Segmenter(SegmentationNet(PRESETS["tiny"])), tmp_path / "seg",
                   {"val_dice": {"value": {"lv_pool": 0.0, "la": 0.9}, "definition": "test"}})
    dice = _validation_dice(load_segmenter(tmp_path / "seg"))
    assert dice == {"lv_pool": 0.0, "la": 0.9} and min(dice.values()) < MIN_DICE
    save_segmenter(Segmenter(SegmentationNet(PRESETS["tiny"])), tmp_path / "bare")
    assert _validation_dice(load_segmenter(tmp_path / "bare")) is None
