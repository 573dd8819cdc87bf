"""3D video VAE (paper §2.2, "Anatomical Anchor Learning"): cine (1, 50, 96, 96) ↔ latent (C, 50, 12, 12).

A KL-regularised autoencoder in the style of Rombach et al. (LDM, CVPR 2022), made 3-D: Conv3d ResNet
blocks with GroupNorm, 2× spatial down/upsampling per level (time is kept), self-attention only at the
latent scale. Differences from the public code (docs/decisions.md):

- time is padded **circularly**: a cine covers one R-R interval, so frame 49 is followed by frame 0;
  space is zero-padded.
- attention goes through ``scaled_dot_product_attention`` and by default is *factorised* at the 12×12
  latent scale (spatial over 144 positions per frame, then temporal over 50 frames per position); the
  public code's full attention over 50·24·24 = 28,800 positions needs 26.5 GB for one video.
- the latent scale (1 / std of the training latents) is a buffer saved with the weights, so
  ``encode_latent``/``decode_latent`` are self-contained.
- the ``paper`` sizes (the config defaults) are narrower than the public code's: widths 32-64-128-128
  instead of 64-128-256-256, per-frame (2-D) convolutions at 96² and 48² and 3-D ones at 24² and 12²,
  the same latent (4×50×12×12). One decode costs ~0.38 TFLOP instead of ~2.6 (encode ~0.22 instead of
  ~1.4), which the CPU target of ~10 s per generated video needs. ``PRESETS["public"]`` (and
  ``configs/vae/public.yaml``) keeps the public code's sizes for comparison.

Loss (``forward``): L1 + β·KL [+ w_s·(1 − SSIM)] [+ w_g·hinge-GAN]; see ``forward_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgflowcmr.canonical import N_FRAMES, SIZE
from ecgflowcmr.errors import ConfigError
from ecgflowcmr.limits import check_model_sizes
from ecgflowcmr.models.image_metrics import ssim


@dataclass
class VAEConfig:
    in_channels: int = 1
    """Image channels (1: grey-level cine)."""
    latent_channels: int = 4
    """C, channels of the latent (paper: 4)."""
    channels: tuple[int, ...] = (32, 64, 128, 128)
    """Width per resolution level; len − 1 levels of 2× spatial downsampling (4 levels → 8×, as the paper).
    The public code's 64-128-256-256 costs ~7× the FLOPs (``PRESETS["public"]``)."""
    num_blocks: int = 2
    """ResNet blocks per level in the encoder; the decoder has one more per level (as LDM)."""
    temporal_kernel: tuple[int, ...] = (1, 1, 3, 3)
    """Temporal kernel size per level (1: per-frame 2-D convs, 3× cheaper; 3: 3-D). Odd. Mid block uses the last.
    Default: time is mixed only at 24² and 12² (and by the latent-scale attention)."""
    factorise_time: bool = False
    """Each kt×3×3 convolution (kt > 1) as a 1×3×3 spatial one followed by a kt×1×1 temporal one ((2+1)-D,
    Tran et al., CVPR 2018): (9·c_in + 3·c_out)/(27·c_in) of the FLOPs for kt = 3, time still mixed at that level.
    Paper widths: decode 246 GFLOP instead of 380, encode 138 instead of 218. Off by default: at tiny widths on the
    phantom (300 steps, same seed) it reached 19.4 dB / SSIM 0.62 on held-out cines against 20.8 / 0.68 in 3-D."""
    norm_groups: int = 32
    """GroupNorm groups; must divide every width."""
    attention: Literal["factorised", "full", "none"] = "factorised"
    """Self-attention in the mid blocks (latent scale only): spatial-then-temporal, all T·h·w positions, or none."""
    attention_heads: int = 4
    """Heads of the mid-block attention; must divide channels[-1]."""
    frames: int = N_FRAMES
    """T of the input cine (time is not downsampled)."""
    size: int = SIZE
    """H = W of the input cine; must be divisible by the downsampling factor."""
    kl_weight: float = 1e-6
    """β: weight of KL(q(z|x) ‖ N(0, I)) summed over the latent, per input pixel (LDM's kl_weight 1e-6)."""
    ssim_weight: float = 0.0
    """Weight of the structural term 1 − SSIM (per frame, 11×11 Gaussian): a perceptual-style loss with no weights."""
    train_frames: int = 0
    """If > 0, train on a random circular window of this many consecutive frames (cheaper steps); 0: all."""
    gan_weight: float = 0.0
    """Weight of the hinge adversarial term from a 3-D PatchGAN (0: no discriminator), relative to the
    reconstruction: the term is scaled each step so that its gradient at the decoder's last layer has this
    multiple of the reconstruction's gradient norm (LDM's adaptive weight; the public code uses 0.5)."""
    gan_start: int = 5000
    """Optimizer steps before the adversarial term starts."""
    disc_warmup: int = 0
    """Optimizer steps (before ``gan_start``) in which the discriminator trains alone: a generator term from
    an untrained discriminator is noise that the adaptive weight still scales to the reconstruction's size."""
    disc_channels: int = 64
    """Width of the first discriminator layer."""
    disc_lr: float = 1e-4
    """Learning rate of the discriminator's own Adam (the training loop steps it: ``training.adversary``)."""

    def __post_init__(self) -> None:
        self.channels, self.temporal_kernel = tuple(self.channels), tuple(self.temporal_kernel)
        check_model_sizes("model.", self, widths=("in_channels", "latent_channels", "channels", "attention_heads",
                                                  "disc_channels", "norm_groups"),
                          depths=("num_blocks", "temporal_kernel"), frames=("frames",), sides=("size",))
        if len(self.channels) > 8:
            raise ConfigError("model.channels", f"{len(self.channels)} levels; at most 8 (2⁷× downsampling)")
        for name in ("in_channels", "latent_channels", "num_blocks", "norm_groups", "attention_heads", "frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}", f"must be ≥ 1, got {getattr(self, name)}")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError("model.channels", f"needs ≥ 1 positive width, got {self.channels}")
        if any(c % self.norm_groups for c in self.channels):
            raise ConfigError("model.norm_groups", f"{self.norm_groups} does not divide every width {self.channels}")
        if len(self.temporal_kernel) != len(self.channels) or any(k < 1 or k % 2 == 0 for k in self.temporal_kernel):
            raise ConfigError("model.temporal_kernel", f"needs one odd size per level {self.channels}, got {self.temporal_kernel}")
        if self.size < 1 or self.size % self.downsample_factor:
            raise ConfigError("model.size", f"{self.size} is not divisible by the downsampling factor {self.downsample_factor}")
        if self.attention != "none" and self.channels[-1] % self.attention_heads:
            raise ConfigError("model.attention_heads", f"{self.attention_heads} does not divide {self.channels[-1]}")
        if not 0 <= self.train_frames <= self.frames:
            raise ConfigError("model.train_frames", f"must be in [0, frames={self.frames}], got {self.train_frames}")
        for name in ("kl_weight", "ssim_weight", "gan_weight", "gan_start", "disc_warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name}", f"must be ≥ 0, got {getattr(self, name)}")
        if self.disc_channels < 1 or self.disc_lr <= 0:
            raise ConfigError("model.disc_channels", "disc_channels must be ≥ 1 and disc_lr > 0")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, h, w) of one latent video."""
        s = self.size // self.downsample_factor
        return (self.latent_channels, self.frames, s, s)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class PeriodicConv3d(nn.Conv3d):
    """Conv3d with kernel (kt, 3, 3): circular padding in time (the cardiac cycle), zeros in space.

    One video (batch 1) without gradients on CPU, kt > 1: a 2-D convolution of the kt neighbouring frames
    stacked along the channels (the same sums in another order, within float round-off). PyTorch sends
    batch-1 3-D convolutions to its ``slow_conv3d`` kernel, ~10× slower at the 12² latent scale; the VAE
    decodes one video at a time on CPU (``decode_latent``), so this is its path there.
    """

    def __init__(self, cin: int, cout: int, kt: int = 3, k: int = 3, stride: int = 1):
        super().__init__(cin, cout, (kt, k, k), stride=(1, stride, stride), padding=(0, k // 2, k // 2))
        self.pad_t = kt // 2

    def forward(self, x: Tensor) -> Tensor:
        if self.pad_t:
            x = torch.cat([x[:, :, -self.pad_t :], x, x[:, :, : self.pad_t]], dim=2)  # wrap T
            if x.shape[0] == 1 and x.device.type == "cpu" and not torch.is_grad_enabled():
                return self.forward_stacked(x)
        return super().forward(x)

    def forward_stacked(self, x: Tensor) -> Tensor:
        """x (B, C, T + kt − 1, H, W), already wrapped → (B, C', T, H', W'), as ``Conv3d.forward``."""
        kt = self.kernel_size[0]
        b, c, t = x.shape[0], x.shape[1], x.shape[2] - kt + 1
        frames = x.transpose(1, 2)  # (B, T + kt − 1, C, H, W)
        stack = torch.cat([frames[:, i : i + t] for i in range(kt)], dim=2).flatten(0, 1)  # (B·T, kt·C, H, W)
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, kt * c, *self.kernel_size[1:])
        y = F.conv2d(stack, weight, self.bias, self.stride[1:], self.padding[1:])  # (B·T, C', H', W')
        return y.view(b, t, *y.shape[1:]).transpose(1, 2)


def video_conv(cin: int, cout: int, kt: int, factorise_time: bool, stride: int = 1) -> nn.Module:
    """A kt×3×3 ``PeriodicConv3d``, or with ``factorise_time`` (and kt > 1) a 1×3×3 one then a kt×1×1 one."""
    if not factorise_time or kt == 1:
        return PeriodicConv3d(cin, cout, kt, stride=stride)
    return nn.Sequential(PeriodicConv3d(cin, cout, 1, stride=stride), PeriodicConv3d(cout, cout, kt, k=1))


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` with a 1×1×1 skip projection when widths differ."""

    def __init__(self, cin: int, cout: int, kt: int, groups: int, factorise_time: bool = False):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = video_conv(cin, cout, kt, factorise_time)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = video_conv(cout, cout, kt, factorise_time)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


# permutation of (B, C, T, H, W) that puts the attended axes last before C, and how many axes they are
ATTENTION_AXES = {"space": ((0, 2, 3, 4, 1), 2), "time": ((0, 3, 4, 2, 1), 1), "all": ((0, 2, 3, 4, 1), 3)}


class AxisAttention(nn.Module):
    """Residual self-attention over some axes of (B, C, T, H, W) through SDPA; the other axes are batch.

    ``over``: "space" (H·W tokens per frame), "time" (T tokens per pixel) or "all" (T·H·W tokens).
    """

    def __init__(self, channels: int, heads: int, groups: int, over: Literal["space", "time", "all"]):
        super().__init__()
        self.heads, self.over = heads, over
        self.perm, self.n_token_axes = ATTENTION_AXES[over]
        self.inverse = tuple(self.perm.index(i) for i in range(5))
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x).permute(self.perm)  # (B, ..., C) with the attended axes last before C
        shape = y.shape
        c = shape[-1]
        seq = y.reshape(-1, math.prod(shape[-1 - self.n_token_axes : -1]), c)  # (N, L, C)
        n, length = seq.shape[:2]
        qkv = self.qkv(seq).view(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, L, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(n, length, c))  # (N, L, C)
        return x + out.reshape(shape).permute(self.inverse)


def mid_block(cfg: VAEConfig) -> nn.Sequential:
    """ResBlock → attention (latent scale only) → ResBlock."""
    c, kt, g, heads = cfg.channels[-1], cfg.temporal_kernel[-1], cfg.norm_groups, cfg.attention_heads
    overs = {"factorised": ("space", "time"), "full": ("all",), "none": ()}[cfg.attention]
    attn = [AxisAttention(c, heads, g, over) for over in overs]
    return nn.Sequential(ResBlock(c, c, kt, g, cfg.factorise_time), *attn, ResBlock(c, c, kt, g, cfg.factorise_time))


class Encoder(nn.Module):
    """(B, 1, T, H, W) → (B, 2C, T, H/f, W/f): mean and log-variance."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, kt, g = cfg.channels, cfg.temporal_kernel, cfg.norm_groups
        layers: list[nn.Module] = [video_conv(cfg.in_channels, ch[0], kt[0], cfg.factorise_time)]
        for level, width in enumerate(ch):
            cin = ch[max(level - 1, 0)]
            layers += [ResBlock(cin if i == 0 else width, width, kt[level], g, cfg.factorise_time)
                       for i in range(cfg.num_blocks)]
            if level < len(ch) - 1:
                layers.append(video_conv(width, width, kt[level], cfg.factorise_time, stride=2))  # 2× down in H, W
        layers += [mid_block(cfg), nn.GroupNorm(g, ch[-1], eps=1e-6), nn.SiLU()]
        layers.append(video_conv(ch[-1], 2 * cfg.latent_channels, kt[-1], cfg.factorise_time))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Upsample(nn.Module):
    """Nearest 2× in H, W (time kept), then a conv to the finer level's width (cheaper than LDM's same-width conv)."""

    def __init__(self, cin: int, cout: int, kt: int, factorise_time: bool = False):
        super().__init__()
        self.conv = video_conv(cin, cout, kt, factorise_time)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))


class Decoder(nn.Module):
    """(B, C, T, h, w) → (B, 1, T, h·f, w·f), unbounded (the loss compares it to x in [-1, 1])."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, kt, g = cfg.channels, cfg.temporal_kernel, cfg.norm_groups
        layers: list[nn.Module] = [video_conv(cfg.latent_channels, ch[-1], kt[-1], cfg.factorise_time), mid_block(cfg)]
        cin = ch[-1]
        for level in reversed(range(len(ch))):
            for _ in range(cfg.num_blocks + 1):
                layers.append(ResBlock(cin, ch[level], kt[level], g, cfg.factorise_time))
                cin = ch[level]
            if level > 0:
                layers.append(Upsample(cin, ch[level - 1], kt[level - 1], cfg.factorise_time))  # at the finer level
                cin = ch[level - 1]
        layers += [nn.GroupNorm(g, cin, eps=1e-6), nn.SiLU(), video_conv(cin, cfg.in_channels, kt[0], cfg.factorise_time)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


class PatchDiscriminator3d(nn.Module):
    """3-D PatchGAN (Isola et al. 2017, as used for LDM's autoencoders): one real/fake logit per patch."""

    def __init__(self, in_channels: int, width: int, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(in_channels, width, (3, 4, 4), (1, 2, 2), 1), nn.LeakyReLU(0.2)]
        cin = width
        for i in range(1, layers):
            cout = width * min(2**i, 8)
            mods += [nn.Conv3d(cin, cout, (3, 4, 4), (1, 2, 2), 1), nn.GroupNorm(min(32, cout), cout), nn.LeakyReLU(0.2)]
            cin = cout
        mods.append(nn.Conv3d(cin, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------------


class Adversary(Protocol):
    """A discriminator the training loop trains against the VAE (``training.adversary.Adversary``)."""

    def generator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """The generator's adversarial term for reconstructions ``fake`` of ``real``, a scalar."""
        ...


def one_at_a_time_on_cpu(x: Tensor) -> tuple[Tensor, ...]:
    """The batch split into single videos on CPU (whole on other devices). A batch of 8 cines at 96² leaves
    the cache: decoding measured ~2× slower per cine than one by one, and each video's result no longer
    depends on its batch (``PeriodicConv3d`` then takes its batch-1 path)."""
    return x.split(1) if x.device.type == "cpu" and len(x) > 1 else (x,)


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over all but the batch dim: ``½ Σ (μ² + σ² − 1 − log σ²)`` → (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class VideoVAE(nn.Module):
    """Cine VAE: x (B, 1, T, H, W) in [-1, 1] ↔ z (B, C, T, H/8, W/8).

    ``latent_scale`` (buffer, saved with the weights) is set after training to 1 / std of the training
    latents, so ``encode_latent`` gives ~unit-variance latents for the flow (as LDM's scale_factor).
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_scale", torch.tensor(1.0))

    # ---- the inference contract ------------------------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 1, T, H, W) in [-1, 1] → (mean, logvar), each (B, C, T, H/8, W/8); logvar clamped to [-30, 20]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, C, T, h, w) (unscaled latent) → x̂ (B, 1, T, 8h, 8w), not clamped."""
        return self.decoder(z)

    @torch.no_grad()
    def encode_latent(self, x: Tensor) -> Tensor:
        """x (B, 1, T, H, W) in [-1, 1] → posterior mean × latent_scale (B, C, T, h, w), ~unit variance.
        On CPU one video at a time (``one_at_a_time_on_cpu``)."""
        return torch.cat([self.encode(v)[0] * self.latent_scale for v in one_at_a_time_on_cpu(x)])

    @torch.no_grad()
    def decode_latent(self, z: Tensor) -> Tensor:
        """Scaled latent z (B, C, T, h, w) → cine (B, 1, T, H, W) clamped to [-1, 1]. On CPU one video at a
        time (``one_at_a_time_on_cpu``)."""
        return torch.cat([self.decode(v / self.latent_scale).clamp(-1.0, 1.0) for v in one_at_a_time_on_cpu(z)])

    # ---- training ----------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], adversary: Adversary | None = None
                ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """batch["cine"] (B, 1, T, H, W) in [-1, 1] → (loss, parts). Samples z in training, uses the mean in eval.
        ``adversary``: the discriminator the training loop trains against this model (``gan_weight`` > 0)."""
        x = self.crop_frames(batch["cine"])  # (B, 1, T', H, W)
        mean, logvar = self.encode(x)  # (B, C, T', h, w) each
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        x_hat = self.decode(z)  # (B, 1, T', H, W)
        return self.forward_loss(x, x_hat, mean, logvar, adversary)

    def crop_frames(self, x: Tensor) -> Tensor:
        """In training with ``train_frames`` > 0: a random circular window of that many frames; else x."""
        k = self.config.train_frames
        if not (self.training and k and k < x.shape[2]):
            return x
        start = int(torch.randint(x.shape[2], ()))
        index = (start + torch.arange(k, device=x.device)) % x.shape[2]
        return x.index_select(2, index)

    def forward_loss(self, x: Tensor, x_hat: Tensor, mean: Tensor, logvar: Tensor,
                     adversary: Adversary | None = None) -> tuple[Tensor, dict]:
        """``|x − x̂|₁ (mean) + β·KL/N_pix [+ w_s·(1 − SSIM)] [+ λ·(−D(x̂))]``, λ the adaptive GAN weight.

        KL is summed over the latent of each video and divided by that video's pixel count N_pix: this is
        LDM's objective (Σ|x − x̂| + β·ΣKL) divided by N_pix, so β means the same as their ``kl_weight``.
        """
        cfg = self.config
        rec = (x_hat - x).abs().mean()
        kl = kl_divergence(mean, logvar).mean() / x[0].numel()
        parts: dict[str, Tensor | float] = {"rec_l1": rec.detach(), "kl_per_pixel": kl.detach()}
        reconstruction = rec
        if cfg.ssim_weight > 0:  # compared on the [0, 1] display scale, per frame
            structural = 1.0 - ssim((x_hat.flatten(1, 2) + 1) / 2, (x.flatten(1, 2) + 1) / 2).mean()
            reconstruction = reconstruction + cfg.ssim_weight * structural
            parts["one_minus_ssim"] = structural.detach()
        loss = reconstruction + cfg.kl_weight * kl
        if adversary is not None:  # same part keys every step: 0 until the GAN starts
            adversarial = adversary.generator_loss(x, x_hat)
            weight = self.adaptive_gan_weight(reconstruction, adversarial)
            loss = loss + weight * adversarial
            parts["gen_adv"], parts["gan_weight"] = adversarial.detach(), weight
        return loss, parts

    def adaptive_gan_weight(self, reconstruction: Tensor, adversarial: Tensor) -> float:
        """``gan_weight · ‖∇_W reconstruction‖ / (‖∇_W adversarial‖ + 1e-4)`` at the decoder's last weight W,
        clamped to [0, 10⁴] (Esser et al. 2021; LDM): the adversarial gradient is kept at a fixed share of the
        reconstruction's whatever the discriminator's scale. 0 while the adversarial term carries no gradient."""
        if not (torch.is_grad_enabled() and adversarial.requires_grad):
            return 0.0
        last = self.decoder.layers[-1].weight if isinstance(self.decoder.layers[-1], nn.Conv3d) \
            else self.decoder.layers[-1][-1].weight
        g_rec = torch.autograd.grad(reconstruction, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adversarial, last, retain_graph=True)[0]
        ratio = float(g_rec.norm() / (g_adv.norm() + 1e-4))
        return self.config.gan_weight * min(max(ratio, 0.0), 1e4)


PAPER_GAN = dict(gan_weight=0.5, gan_start=10_000, disc_warmup=2_000)
"""The public code's adversarial term (LDM's loss: disc_weight 0.5 from step 10,000), with the discriminator
trained alone for 2,000 steps first (docs/generator.md, round 10)."""

PRESETS: dict[str, VAEConfig] = {
    "paper": VAEConfig(**PAPER_GAN),
    "public": VAEConfig(channels=(64, 128, 256, 256), temporal_kernel=(3, 3, 3, 3), **PAPER_GAN),  # its sizes
    "tiny": VAEConfig(channels=(8, 16, 32, 32), num_blocks=1, temporal_kernel=(1, 1, 3, 3), norm_groups=8,
                      train_frames=10),
}
