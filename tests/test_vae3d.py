"""3D video VAE, its training stage and the image metrics: shapes, closed forms, invalid configs."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from safetensors import safe_open

from ecgflowcmr.bundle import load_model
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.models.image_metrics import gaussian_window, psnr, ssim
from ecgflowcmr.models.vae3d import PRESETS, AxisAttention, PeriodicConv3d, VAEConfig, VideoVAE, kl_divergence

torch.set_num_threads(1)

SMALL = dict(channels=(8, 16), num_blocks=1, temporal_kernel=(3, 3), norm_groups=4, frames=6, size=16,
             attention_heads=2)
"""A 2× VAE on 6×16×16 clips: fast enough for optimisation tests."""


def small(**kw) -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(VAEConfig(**{**SMALL, **kw}))


def clip(b: int = 2, frames: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    """A bright disc on a dark background whose radius beats over the clip, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(b):
        c = size / 2 + torch.rand(2, generator=g) * 2 - 1
        r = size / 4 * (1 + 0.3 * torch.sin(torch.arange(frames) * 2 * math.pi / frames))
        d = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2).sqrt()
        out.append(torch.where(d[None] < r[:, None, None], 0.8, -0.6))
    return torch.stack(out)[:, None].float()  # (B, 1, T, S, S)


# --------------------------------------------------------------------------------------------------
# Shapes and attention placement (the real 1×50×96×96 size)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, attention", [("tiny", "factorised"), ("small", "full")])
def test_shapes_and_attention_only_at_latent_scale(preset, attention):
    cfg = PRESETS["tiny"] if preset == "tiny" else VAEConfig(**{**SMALL, "attention": attention})
    model = VideoVAE(cfg).eval()
    seen = []
    for m in model.modules():
        if isinstance(m, AxisAttention):
            m.register_forward_hook(lambda mod, inp, out: seen.append((mod.over, tuple(inp[0].shape))))
    x = torch.rand(1, 1, cfg.frames, cfg.size, cfg.size) * 2 - 1
    with torch.no_grad():
        mean, logvar = model.encode(x)
        y = model.decode(mean)
    assert mean.shape == logvar.shape == (1, *cfg.latent_shape)
    if preset == "tiny":
        assert cfg.latent_shape == (4, 50, 12, 12)
    assert y.shape == x.shape
    expected = {"factorised": ["space", "time"], "full": ["all"]}[attention]
    assert [over for over, _ in seen] == expected * 2  # encoder mid block, decoder mid block
    assert all(shape[-2:] == cfg.latent_shape[-2:] for _, shape in seen)  # only at the latent scale


def test_paper_preset_default_attention_is_factorised_at_latent_scale_only():
    cfg = PRESETS["paper"]
    assert (cfg.latent_channels, cfg.downsample_factor, cfg.latent_shape) == (4, 8, (4, 50, 12, 12))
    model = VideoVAE(cfg)
    overs = [m.over for m in model.modules() if isinstance(m, AxisAttention)]
    assert overs == ["space", "time", "space", "time"]
    attn = {name: m for name, m in model.named_modules() if isinstance(m, AxisAttention)}
    assert all(re.fullmatch(r"(encoder|decoder)\.layers\.\d+\.[12]", name) for name in attn)  # mid blocks only
    assert [m.norm.num_channels for m in attn.values()] == [cfg.channels[-1]] * 4


@pytest.mark.parametrize("attention, factorise_time", [("factorised", False), ("full", False), ("none", False),
                                                       ("factorised", True)])
def test_time_is_circular(attention, factorise_time):
    """Circular padding in time and attention without positions: rolling frames rolls the latent."""
    model = small(attention=attention, factorise_time=factorise_time).eval()
    x = clip(1)
    with torch.no_grad():
        a = model.encode(x.roll(2, dims=2))[0]
        b = model.encode(x)[0].roll(2, dims=2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factorise_time", [False, True])
def test_cpu_inference_path_equals_the_batched_3d_convolution(factorise_time):
    """encode_latent / decode_latent on CPU (one video at a time, batch-1 convolutions over stacked frames:
    speed only) give what the batched Conv3d path gives (taken here with gradients on), within round-off."""
    model = small(temporal_kernel=(3, 5), factorise_time=factorise_time).eval()
    x = clip(3)
    with torch.enable_grad():
        z_ref = (model.encode(x)[0] * model.latent_scale).detach()
        x_ref = model.decode(z_ref / model.latent_scale).clamp(-1, 1).detach()
    torch.testing.assert_close(model.encode_latent(x), z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.decode_latent(z_ref), x_ref, atol=1e-5, rtol=1e-5)
    conv = PeriodicConv3d(3, 4, kt=3, stride=2)
    wrapped = torch.randn(2, 3, 7 + 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv.forward_stacked(wrapped), torch.nn.Conv3d.forward(conv, wrapped),
                                   atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------


def test_kl_closed_form():
    shape = (3, 2, 4, 5, 5)
    n = math.prod(shape[1:])
    zeros = torch.zeros(shape)
    torch.testing.assert_close(kl_divergence(zeros, zeros), torch.zeros(3))
    torch.testing.assert_close(kl_divergence(zeros + 1, zeros), torch.full((3,), 0.5 * n))
    log2 = torch.full(shape, math.log(2.0))
    torch.testing.assert_close(kl_divergence(zeros, log2), torch.full((3,), 0.5 * n * (1 - math.log(2.0))))


def test_loss_is_l1_plus_beta_kl_per_pixel():
    model = small(kl_weight=1e-2).eval()
    x = clip()
    loss, parts = model({"cine": x})
    mean, logvar = model.encode(x)
    kl = kl_divergence(mean, logvar).mean() / x[0].numel()
    torch.testing.assert_close(parts["kl_per_pixel"], kl.detach())
    torch.testing.assert_close(loss.detach(), parts["rec_l1"] + 1e-2 * kl.detach())


def test_reconstruction_loss_decreases_on_one_batch():
    model = small(ssim_weight=0.1)
    x = clip()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def eval_rec() -> float:
        model.eval()
        with torch.no_grad():
            return float(model({"cine": x})[1]["rec_l1"])

    before = eval_rec()
    model.train()
    for _ in range(12):
        loss, parts = model({"cine": x})
        assert set(parts) == {"rec_l1", "kl_per_pixel", "one_minus_ssim"}
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_rec() < 0.6 * before


def test_train_frames_crops_a_circular_window_in_training_only():
    model = small(train_frames=4)
    x = clip(1)
    assert model.crop_frames(x).shape[2] == 4
    model.eval()
    assert model.crop_frames(x).shape[2] == 6
    window = VideoVAE(VAEConfig(**{**SMALL, "train_frames": 4})).train().crop_frames(torch.arange(6.0).view(1, 1, 6, 1, 1))
    assert ((window.flatten().diff() % 6) == 1).all()  # consecutive frames, wrapping around the cycle


def test_gan_discriminator_is_trained_by_the_loop_not_inside_forward():
    from ecgflowcmr.models.vae3d import PatchDiscriminator3d
    from ecgflowcmr.training.adversary import Adversary

    model = small(gan_weight=0.1)
    adversary = Adversary(PatchDiscriminator3d(1, 8), lr=1e-3, start=1)
    disc = adversary.discriminator
    before = [p.clone() for p in disc.parameters()]
    x = clip()
    _, parts = model({"cine": x}, adversary)
    assert parts["gen_adv"] == 0.0  # before the start step (same keys every step)
    assert adversary.step() == {"disc_loss": 0.0}
    assert all(torch.equal(a, p) for a, p in zip(before, disc.parameters()))
    loss, parts = model({"cine": x}, adversary)
    assert parts["gen_adv"] != 0.0
    assert all(torch.equal(a, p) for a, p in zip(before, disc.parameters()))  # forward never steps D
    loss.backward()  # the generator's loss must not touch the discriminator
    assert all(p.grad is None for p in disc.parameters())
    assert model.decoder.layers[-1].weight.grad is not None
    assert adversary.step()["disc_loss"] > 0  # the loop's call: one hinge update on the kept pair
    assert any(not torch.equal(a, p) for a, p in zip(before, disc.parameters()))
    assert not any("disc" in k for k in model.state_dict())  # the engine's export never sees D
    _, parts = model({"cine": x})
    assert "gen_adv" not in parts  # without an adversary (evaluation, inference): the VAE alone


def test_discriminator_warmup_trains_it_alone_before_the_generator_term():
    """start 2, warmup 1: step 0 nothing; step 1 D trains but the VAE's adversarial term is 0; step 2 both."""
    from ecgflowcmr.models.vae3d import PatchDiscriminator3d
    from ecgflowcmr.training.adversary import Adversary

    model = small(gan_weight=0.5)
    adversary = Adversary(PatchDiscriminator3d(1, 8), lr=1e-3, start=2, warmup=1)
    x = clip()
    seen = []
    for _ in range(3):
        before = [p.clone() for p in adversary.discriminator.parameters()]
        _, parts = model({"cine": x}, adversary)
        d_loss = adversary.step()["disc_loss"]
        moved = any(not torch.equal(a, p) for a, p in zip(before, adversary.discriminator.parameters()))
        seen.append((float(parts["gen_adv"]) != 0.0, d_loss > 0, moved))
    assert seen == [(False, False, False), (False, True, True), (True, True, True)]


def test_adaptive_gan_weight_matches_the_gradient_norms_at_the_last_layer():
    """λ = gan_weight·‖∇_W rec‖ / (‖∇_W adv‖ + 1e-4) at the decoder's last weight W (LDM's adaptive weight):
    a discriminator with 100× larger logits gets a 100× smaller λ; without gradients λ = 0."""
    from ecgflowcmr.models.vae3d import PatchDiscriminator3d
    from ecgflowcmr.training.adversary import Adversary

    model = small(gan_weight=0.5).eval()  # eval: the posterior mean, so x̂ below is the forward's own
    adversary = Adversary(PatchDiscriminator3d(1, 8), lr=1e-3, start=0)
    x = clip()
    last = model.decoder.layers[-1].weight
    weights = []
    for scale in (1.0, 100.0):
        with torch.no_grad():
            adversary.discriminator.net[-1].weight.mul_(scale)
        _, parts = model({"cine": x}, adversary)
        x_hat = model.decode(model.encode(x)[0])
        g_rec = torch.autograd.grad((x_hat - x).abs().mean(), last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(-adversary.discriminator(x_hat).mean(), last)[0]
        assert parts["gan_weight"] == pytest.approx(0.5 * float(g_rec.norm() / (g_adv.norm() + 1e-4)), rel=1e-4)
        weights.append(parts["gan_weight"])
    assert weights[0] / weights[1] == pytest.approx(100.0, rel=0.01)
    with torch.no_grad():  # validation: the VAE's own loss
        _, parts = model({"cine": x}, adversary)
    assert parts["gan_weight"] == 0.0


# --------------------------------------------------------------------------------------------------
# Latent scale
# --------------------------------------------------------------------------------------------------


def test_encode_latent_and_decode_latent_use_the_scale():
    model = small().eval()
    x = clip()
    model.latent_scale.fill_(2.5)
    assert "latent_scale" in model.state_dict()
    with torch.no_grad():
        mean = model.encode(x)[0]
        z = model.encode_latent(x)
        torch.testing.assert_close(z, 2.5 * mean)
        out = model.decode_latent(z)
        torch.testing.assert_close(out, model.decode(mean).clamp(-1, 1))
    assert out.min() >= -1 and out.max() <= 1


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_psnr_closed_forms():
    x = torch.rand(2, 1, 4, 16, 16)
    assert torch.isinf(psnr(x, x)).all()
    torch.testing.assert_close(psnr(x, x + 0.1), torch.full((2,), 20.0))  # 10·log10(1 / 0.01)
    signs = torch.randint(0, 2, x.shape).float() * 2 - 1
    torch.testing.assert_close(psnr(x, x + 0.05 * signs, data_range=2.0), torch.full((2,), 10 * math.log10(4 / 0.0025)))


def test_ssim_closed_forms():
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    a, b = 0.3, 0.7  # constant images: only the luminance term remains
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    full = dict(size=(1, 2, 16, 16), dtype=torch.float64)
    torch.testing.assert_close(ssim(torch.full(fill_value=a, **full), torch.full(fill_value=b, **full)),
                               torch.tensor([expected], dtype=torch.float64))
    assert ssim(x, torch.rand(2, 3, 24, 24, dtype=torch.float64)).max() < 0.2  # independent noise: little structure in common
    torch.testing.assert_close(gaussian_window().sum(), torch.tensor(1.0))


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "field"), [
    (dict(channels=()), "model.channels"),
    (dict(channels=(64, 100, 256, 256)), "model.norm_groups"),  # 100 not divisible by 32 groups
    (dict(temporal_kernel=(3, 3, 3)), "model.temporal_kernel"),  # one per level
    (dict(temporal_kernel=(3, 2, 3, 3)), "model.temporal_kernel"),  # even
    (dict(size=100), "model.size"),  # not divisible by 8
    (dict(attention_heads=3), "model.attention_heads"),
    (dict(attention="global"), "attention"),
    (dict(latent_channels=0), "model.latent_channels"),
    (dict(train_frames=51), "model.train_frames"),
    (dict(kl_weight=-1.0), "model.kl_weight"),
    (dict(channels=(8, 10**7, 8, 8), norm_groups=8), "model.channels"),  # absurd sizes: refused before building
    (dict(size=10**6), "model.size"),
    (dict(num_blocks=10**5), "model.num_blocks"),
])
def test_invalid_configs_raise(bad, field):
    from ecgflowcmr.config import from_dict

    with pytest.raises(ConfigError) as info:
        from_dict(VAEConfig, {k: list(v) if isinstance(v, tuple) else v for k, v in bad.items()})
    assert info.value.where == field


def test_presets_load_from_yaml():
    from ecgflowcmr.config import load_config
    from ecgflowcmr.training.stages.vae import RunConfig

    tiny = load_config(RunConfig, "vae", "tiny")
    assert tiny.model == PRESETS["tiny"] and tiny.model.train_frames == 10
    paper = load_config(RunConfig, "vae", "paper")
    assert paper.model == PRESETS["paper"] and paper.train.epochs == 10
    assert dataclasses.replace(paper.model, gan_weight=0.0, gan_start=5000, disc_warmup=0) == VAEConfig()
    assert (paper.model.gan_weight, paper.model.gan_start) == (0.5, 10_000)  # the public code's LDM loss
    public = load_config(RunConfig, "vae", "public")
    assert public.model == PRESETS["public"] and public.model.channels == (64, 128, 256, 256)
    assert public.train == paper.train


def counted_gflop(cfg: VAEConfig) -> tuple[float, float]:
    """GFLOP of one encode and one decode of a batch-1 video, counted on the meta device (no compute)."""
    from ecgflowcmr.evaluation.speed import counted_flops

    with torch.device("meta"), torch.no_grad():
        model = VideoVAE(cfg)
        x, z = torch.empty(1, 1, cfg.frames, cfg.size, cfg.size), torch.empty(1, *cfg.latent_shape)
        return counted_flops(lambda: model.encode(x)) / 1e9, counted_flops(lambda: model.decode(z)) / 1e9


def test_paper_preset_fits_the_cpu_flop_budget_and_public_costs_far_more():
    """Issue 4 §4 (≤ 10 s per video on a 2-core CPU) leaves the VAE ≤ ~0.3 TFLOP to encode, ≤ ~0.5 to decode."""
    enc, dec = counted_gflop(PRESETS["paper"])
    assert enc <= 300 and dec <= 500
    public_enc, public_dec = counted_gflop(PRESETS["public"])
    assert public_enc > 4 * enc and public_dec > 4 * dec
    assert PRESETS["public"].latent_shape == PRESETS["paper"].latent_shape == (4, 50, 12, 12)


def test_paper_preset_mixes_time_only_at_24_and_12():
    """Paper preset: every conv reading 96² or 48² is per-frame (kernel 1×3×3), every one reading 24² or 12² is 3-D."""
    cfg = PRESETS["paper"]
    seen = set()
    with torch.device("meta"), torch.no_grad():
        model = VideoVAE(cfg)
        for m in model.modules():
            if isinstance(m, PeriodicConv3d):
                m.register_forward_hook(lambda mod, inp, out: seen.add((inp[0].shape[-1], mod.kernel_size[0])))
        model.decode(model.encode(torch.empty(1, 1, cfg.frames, cfg.size, cfg.size))[0])
    assert seen == {(96, 1), (48, 1), (24, 3), (12, 3)}


def test_factorised_time_splits_each_3d_conv_and_cuts_flops():
    """factorise_time: every kt×3×3 conv becomes 1×3×3 then kt×1×1 (none left 3×3×3), per-frame levels unchanged,
    the same shapes, and ≥ 30 % fewer FLOPs for the paper widths."""
    cfg = dataclasses.replace(PRESETS["paper"], factorise_time=True)
    kernels = set()
    with torch.device("meta"), torch.no_grad():
        model = VideoVAE(cfg)
        for m in model.modules():
            if isinstance(m, PeriodicConv3d):
                m.register_forward_hook(lambda mod, inp, out: kernels.add((inp[0].shape[-1], mod.kernel_size)))
        z = model.encode(torch.empty(1, 1, cfg.frames, cfg.size, cfg.size))[0]
        assert z.shape == (1, *cfg.latent_shape)
        assert model.decode(z).shape == (1, 1, cfg.frames, cfg.size, cfg.size)
    assert {k for _, k in kernels} == {(1, 3, 3), (3, 1, 1)}
    assert {(s, k) for s, k in kernels if k == (3, 1, 1)} == {(24, (3, 1, 1)), (12, (3, 1, 1))}
    enc, dec = counted_gflop(cfg)
    paper_enc, paper_dec = counted_gflop(PRESETS["paper"])
    assert enc < 0.7 * paper_enc and dec < 0.7 * paper_dec


# --------------------------------------------------------------------------------------------------
# The training stage: scale, template, metrics, load
# --------------------------------------------------------------------------------------------------


def test_template_modes():
    from ecgflowcmr.training.stages.vae import template_latent

    frame_mean = torch.randn(4, 50, 12, 12)
    static = template_latent(frame_mean, "static")
    assert static.shape == (4, 50, 12, 12)
    torch.testing.assert_close(static, frame_mean.mean(1, keepdim=True).expand(-1, 50, -1, -1))
    torch.testing.assert_close(template_latent(frame_mean, "per_frame"), frame_mean)


@pytest.mark.parametrize("mode", ["static"])
def test_stage_end_to_end_writes_scale_template_metrics(synthetic_store, tmp_path, mode):
    """Two training steps of the tiny preset, then finalize: scale saved with the weights, template, metrics."""
    import json

    from ecgflowcmr.store.prepared import StoreDataset
    from ecgflowcmr.training.stages import vae as stage
    from ecgflowcmr.training.tasks import train

    run = train("vae", synthetic_store, tmp_path / "run", "tiny",  # tiny, narrowed further for speed
                sets=["model.channels=[4,4,8,8]", "model.norm_groups=4", "model.attention_heads=2",
                      "train.steps=2", "train.batch_size=1", "train.warmup_steps=1", "train.val_batches=1",
                      f"stage.template={mode}", "eval.max_items=1", "eval.batch_size=4"])
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("psnr_db", "ssim", "latent_scale", "template_psnr_db"):
        assert math.isfinite(metrics[key]["value"]) and metrics[key]["definition"]
    assert -1 <= metrics["ssim"]["value"] <= 1

    model = load_model(run, "vae")
    assert not model.training
    assert model.latent_scale.item() == pytest.approx(metrics["latent_scale"]["value"], rel=1e-6)
    with safe_open(str(run / "template.safetensors"), "pt") as fh:
        template = fh.get_tensor("template")
        assert fh.metadata()["mode"] == mode
    assert template.shape == (4, 50, 12, 12)
    # the template is the mean scaled latent of the training cines, which have unit spread once scaled
    train_set = StoreDataset(synthetic_store, "train", fields=("cine",))
    with torch.no_grad():
        z = torch.cat([model.encode_latent(train_set[i]["cine"][None]) for i in range(len(train_set))])
    torch.testing.assert_close(template, stage.template_latent(z.mean(0), mode), atol=1e-4, rtol=1e-4)
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)


def test_resume_continues_the_gan_discriminator(synthetic_store, tmp_path):
    """With the GAN option, stop after 2 of 4 steps and resume: the exported weights equal an uninterrupted run's
    (a discriminator restarted from scratch on resume would give the generator other adversarial gradients)."""
    from safetensors.torch import load_file

    from ecgflowcmr.training.tasks import train

    sets = ["model.channels=[4,4,8,8]", "model.norm_groups=4", "model.attention_heads=2", "model.gan_weight=0.5",
            "model.gan_start=0", "model.disc_channels=4", "model.disc_lr=0.1", "train.steps=4", "train.batch_size=1",
            "train.warmup_steps=1", "train.val_every=0", "train.ckpt_every=2", "eval.max_items=1"]
    whole = train("vae", synthetic_store, tmp_path / "whole", "tiny", sets=sets)
    train("vae", synthetic_store, tmp_path / "resumed", "tiny", sets=[*sets, "train.stop_at_step=2"])
    resumed = train("vae", synthetic_store, tmp_path / "resumed", "tiny", sets=sets, resume="latest")
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)


def test_decoder_fine_tuning_keeps_the_encoder_scale_and_template(synthetic_store, tmp_path):
    """``stage.train=decoder`` from a trained VAE (here with the GAN on): the encoder, latent scale and template
    are the init's bit for bit — so a flow trained on its latents decodes with the new decoder — and the
    decoder has trained."""
    from safetensors.torch import load_file

    from ecgflowcmr.training.tasks import train

    sets = ["model.channels=[4,4,8,8]", "model.norm_groups=4", "model.attention_heads=2", "train.steps=2",
            "train.batch_size=1", "train.warmup_steps=1", "train.val_every=0", "eval.max_items=1"]
    base = train("vae", synthetic_store, tmp_path / "base", "tiny", sets=sets)
    tuned = train("vae", synthetic_store, tmp_path / "tuned", "tiny", sets=[
        *sets, f"stage.init={base}", "stage.train=decoder", "model.gan_weight=0.5", "model.gan_start=0",
        "model.disc_channels=4"])
    a, b = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        if name.startswith("decoder."):
            continue
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0, msg=name)  # encoder, latent_scale
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith("decoder."))
    assert (base / "template.safetensors").read_bytes() == (tuned / "template.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"stage\.init"):
        train("vae", synthetic_store, tmp_path / "bad", "tiny", sets=[*sets, "stage.train=decoder"])
    (base / "template.safetensors").unlink()  # an unfinished init fails before any training
    with pytest.raises(InputError, match="template not found"):
        train("vae", synthetic_store, tmp_path / "early", "tiny", sets=[*sets, f"stage.init={base}",
                                                                        "stage.train=decoder"])
    assert not (tmp_path / "early" / "checkpoints").exists()
