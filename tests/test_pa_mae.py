"""PA-MAE: shapes, masking, losses (Eq. 1–3), aligned features, bad input, configs, the training stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecgflowcmr.config import from_dict, to_dict
from ecgflowcmr.errors import ConfigError
from ecgflowcmr.models.align import unwrapped_phase_from_rpeaks
from ecgflowcmr.models.pa_mae import PAMAE, PAMAEConfig

TINY = {"width": 32, "depth": 2, "heads": 4, "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2}


def tiny(**overrides) -> PAMAE:
    torch.manual_seed(0)
    return PAMAE(PAMAEConfig(**{**TINY, **overrides}))


def spiky_ecg(batch: int = 2, rr: int = 400, first: int = 150) -> torch.Tensor:
    """(B, 12, 5000) mV: Gaussian R-waves every ``rr`` samples plus a little noise."""
    t = torch.arange(5000, dtype=torch.float32)
    beat = sum(torch.exp(-0.5 * ((t - r) / 6.0) ** 2) for r in range(first, 5000, rr))
    gen = torch.Generator().manual_seed(1)
    return beat * torch.linspace(0.5, 1.5, 12)[:, None] + 0.02 * torch.randn(batch, 12, 5000, generator=gen)


@pytest.mark.parametrize("encoder", ["vit", "conv"])
def test_shapes(encoder):
    model = tiny(encoder=encoder).eval()
    ecg = spiky_ecg(2)
    with torch.no_grad():
        tokens, phase = model.encode(ecg)
        aligned = model.encode_aligned(ecg)
        loss, parts = model({"ecg": ecg, "phase": torch.rand(2, 5000) * 2 * math.pi})
    assert tokens.shape == (2, 625, 32) and phase.shape == (2, 625)
    assert ((phase >= 0) & (phase < 2 * math.pi)).all()
    assert aligned.tokens.shape == (2, 50, 32) and aligned.phase.shape == (2, 625)
    assert aligned.source.dtype == torch.int8 and aligned.valid.dtype == torch.bool
    assert torch.isfinite(loss) and loss.ndim == 0 and set(parts) == {"rec", "phase"}


def test_random_masking_ratio():
    model = tiny()
    ids_keep, mask = model.random_masking(4, 0.5, torch.device("cpu"))
    assert ids_keep.shape == (4, 312) and (mask.sum(dim=1) == 313).all()
    assert (mask.gather(1, ids_keep) == 0).all()
    assert (ids_keep.diff(dim=1) > 0).all()  # sorted, no repeats
    assert not torch.equal(ids_keep[0], ids_keep[1])


@pytest.mark.parametrize("encoder", ["vit", "conv"])
def test_masked_tokens_are_dropped_or_zeroed(encoder):
    """The encoder's output must not depend on the masked samples' values at all."""
    model = tiny(encoder=encoder)
    ecg = spiky_ecg(2)
    torch.manual_seed(3)
    latent, _, mask = model.forward_encoder(ecg, 0.5)
    assert latent.shape == (2, 312, 32)  # features of the kept tokens only
    masked_samples = mask.repeat_interleave(8, dim=1)[:, None, :].bool().expand_as(ecg)
    changed = torch.where(masked_samples, torch.randn_like(ecg) * 5, ecg)
    torch.manual_seed(3)
    latent2, _, mask2 = model.forward_encoder(changed, 0.5)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(latent, latent2)


@pytest.mark.parametrize("encoder", ["vit", "conv"])
def test_loss_finite_and_every_parameter_learns(encoder):
    model = tiny(encoder=encoder)
    labels = torch.rand(2, 5000) * 2 * math.pi
    loss, _ = model({"ecg": spiky_ecg(2), "phase": labels})
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_unknown_phase_is_excluded():
    model = tiny()
    ecg = spiky_ecg(2)
    torch.manual_seed(0)
    loss, parts = model({"ecg": ecg, "phase": torch.full((2, 5000), float("nan"))})
    assert parts["phase"].item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # only the token-centre label counts, and a NaN there removes that token from the mean
    labels = torch.rand(2, 5000) * 2 * math.pi
    other = labels + torch.where(torch.arange(5000) % 8 == 4, 0.0, 1.0)
    torch.manual_seed(0)
    _, a = model({"ecg": ecg, "phase": labels})
    torch.manual_seed(0)
    _, b = model({"ecg": ecg, "phase": other})
    assert a["phase"].item() == pytest.approx(b["phase"].item())


def test_phase_loss_closed_form():
    """Eq. 2 with no masking: mean over known tokens of ‖P(latent) − [sin φ, cos φ]‖²."""
    model = tiny(mask_ratio=0.0)
    ecg = spiky_ecg(1)
    labels = torch.rand(1, 5000) * 2 * math.pi
    labels[:, :2000] = float("nan")
    _, parts = model({"ecg": ecg, "phase": labels})
    latent, _, _ = model.forward_encoder(ecg, 0.0)
    y = labels[:, 4::8]
    known = torch.isfinite(y)
    target = torch.stack([torch.sin(y), torch.cos(y)], dim=-1)
    want = ((model.forward_phase(latent) - target) ** 2).sum(-1)[known].mean()
    assert parts["phase"].item() == pytest.approx(want.item(), rel=1e-5)


def test_reconstruction_on_masked_tokens_only():
    model = tiny(rec_loss_on="masked", phase_weight=0.0)
    ecg = spiky_ecg(2)
    torch.manual_seed(5)
    loss, parts = model({"ecg": ecg, "phase": torch.zeros(2, 5000)})
    torch.manual_seed(5)
    latent, ids, mask = model.forward_encoder(ecg, 0.5)
    err = ((model.forward_decoder(latent, ids) - ecg) ** 2).reshape(2, 12, 625, 8).mean(dim=(1, 3))
    assert parts["rec"].item() == pytest.approx(err[mask.bool()].mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(parts["rec"].item(), rel=1e-6)


def fake_encoder(model: PAMAE, phase: torch.Tensor) -> None:
    """Make ``model.encode`` return position-coded tokens and the given predicted phase."""
    tokens = torch.arange(625, dtype=torch.float32)[None, :, None].expand(phase.shape[0], -1, 32)
    model.encode = lambda ecg: (tokens[: ecg.shape[0]].clone(), phase[: ecg.shape[0]])


def test_source_flags_and_fallbacks():
    model = tiny().eval()
    ramp = torch.remainder(unwrapped_phase_from_rpeaks([np.arange(150, 5000, 400)], 625), 2 * math.pi).float()
    fake_encoder(model, torch.cat([ramp, torch.zeros(2, 625)]))  # sample 0 has cycles, 1 and 2 none
    ecg = spiky_ecg(3)
    # the ECGs' own R-peaks (as read_ecg carries them): item 1 has them, item 2 has none
    rpeaks = [np.arange(150, 5000, 400), np.arange(150, 5000, 400), np.zeros(0, dtype=np.int64)]
    out = model.encode_aligned(ecg, rpeaks)
    assert out.source.tolist() == [0, 1, 2] and out.valid.all()
    torch.testing.assert_close(out.tokens[0], out.tokens[1])  # same R-peaks → same cycle
    without = model.encode_aligned(ecg)  # no R-peaks given: no R-peak fallback
    assert without.source.tolist() == [0, 2, 2]
    # 12 cycles of position-coded tokens: the median is the lower middle one, from R-peak 150 + 5·400 …
    want = (2150 + 400 * torch.arange(50) / 50 - 4) / 8
    torch.testing.assert_close(out.tokens[0, :, 0], want, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.tokens[2, :, 0], 62.5 * torch.arange(50) / 50)  # … or the first second


def test_bad_input_is_flagged_never_nan():
    model = tiny().eval()
    ecg = spiky_ecg(4)
    ecg[1, 3, 100] = float("nan")
    ecg[2] = 0.0
    ecg[3, 7] = 0.0  # one flat lead
    with torch.no_grad():
        out = model.encode_aligned(ecg)
        alone = model.encode_aligned(ecg[:1])
    assert out.valid.tolist() == [True, False, False, False]
    assert torch.isfinite(out.tokens).all() and (out.tokens[1:] == 0).all()
    torch.testing.assert_close(out.tokens[0], alone.tokens[0])


def test_uniform_ablation_resamples_the_whole_record():
    model = tiny(align_cut="uniform").eval()
    fake_encoder(model, torch.zeros(1, 625))
    out = model.encode_aligned(spiky_ecg(1))
    torch.testing.assert_close(out.tokens[0, :, 0], 12.5 * torch.arange(50, dtype=torch.float32))
    assert out.source.tolist() == [2]


@pytest.mark.parametrize(("bad", "field"), [
    ({"encoder": "vit", "heads": 5}, "model.heads"),
    ({"patch": 7}, "model.patch"),
    ({"mask_ratio": 1.0}, "model.mask_ratio"),
    ({"rec_weight": 0.0, "phase_weight": 0.0}, "model.rec_weight"),
    ({"phase_weight": -1.0}, "model.rec_weight"),
    ({"encoder": "rnn"}, "encoder"),
    ({"align_aggregate": "max"}, "align_aggregate"),
    ({"min_rr_s": 2.5}, "model.min_rr_s"),
    ({"conv_kernel": 4}, "model.conv_kernel"),
    ({"width": 0}, "model.width"),
    ({"width": 10**8}, "model.width"),
    ({"samples": 10**9, "patch": 8}, "model.samples"),
])
def test_invalid_configs_raise(bad, field):
    with pytest.raises(ConfigError) as info:
        from_dict(PAMAEConfig, {**TINY, **bad})
    assert info.value.where == field


def test_presets_load():
    from ecgflowcmr.config import load_config
    from ecgflowcmr.training.stages.pamae import RunConfig

    paper = load_config(RunConfig, "pamae", "paper")
    assert paper.model.width == 768 and paper.model.mask_ratio == 0.5 and paper.model.patch == 8
    small = load_config(RunConfig, "pamae", "tiny", ["model.align_aggregate=mean"])
    assert small.model.width < 256 and small.model.align_aggregate == "mean"


def test_stage_build_finalize_load(synthetic_store, tmp_path):
    from ecgflowcmr.bundle import load_model, save_weights
    from ecgflowcmr.training.stages import pamae as stage

    cfg = stage.RunConfig(model=PAMAEConfig(**TINY))
    setup = stage.build(cfg, synthetic_store, tmp_path)
    assert len(setup.train_set) == 12 and len(setup.val_set) == 4  # train 8 + ecg_only 4
    batch = torch.utils.data.default_collate([setup.train_set[i] for i in range(2)])
    loss, _ = setup.model(batch)
    assert torch.isfinite(loss)
    save_weights(setup.model, tmp_path, to_dict(setup.model.config))
    metrics = stage.finalize(setup.model, cfg, synthetic_store, tmp_path)
    for name in ("rec_mse_mv2", "phase_circular_mae_rad", "rpeak_f1_20ms", "fraction_cycle_from_predicted_phase"):
        assert np.isfinite(metrics[name]["value"]) and metrics[name]["definition"]
    assert 0 <= metrics["phase_circular_mae_rad"]["value"] <= math.pi
    loaded = load_model(tmp_path, "pamae")
    ecg = batch["ecg"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(ecg)[0], setup.model.eval().encode(ecg)[0])
