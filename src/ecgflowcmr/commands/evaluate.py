"""``ecgflowcmr evaluate``: a trained bundle on a store's held-out subjects → metrics.json, metrics.csv,
report.html.

Steps: the segmenter (``--segmenter DIR``, else ``OUT/segmenter`` from an earlier run, else trained now on
the store's real training cines and saved there) → the instrument (generation with each subject's own noise,
baselines, chamber measures, agreement, diagnosis, timing, in-domain realism) → Table 1 quality metrics for
the generated cines and each baseline, with the real-vs-real floor → the files. Under ``torchrun`` each rank
generates, reconstructs and segments its block of the subjects (gloo on CPU), reading only that block of the
store, and sends the results to rank 0, which scores them and writes the outputs alone; the other ranks
return once their share is sent.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgflowcmr.atomic import write_text_atomic
from ecgflowcmr.errors import InputError
from ecgflowcmr.evaluation.instrument import DEFAULT_MAX_BASELINE


def evaluate(model: str | Path, data: str | Path, out: str | Path, *, weights: str | Path | None = None,
             segmenter: str | Path | None = None, seg_config: str = "default", seed: int = 0,
             steps: int | None = None, sampler: str | None = None, guidance: float | None = None, batch_size: int = 8,
             max_test: int | None = None, max_train: int | None = None, fid_frames: int = 5, examples: int = 4,
             turing: str | Path | None = None, downstream: str | Path | None = None,
             max_baseline: int | None = DEFAULT_MAX_BASELINE, noise_seeds: int = 1) -> Path | None:
    """Evaluate ``model`` on ``data`` into ``out`` (see the module docstring); returns ``out/metrics.json`` (None
    on the ranks other than 0 under torchrun).
    ``sampler``: euler, heun or ancestral, ``guidance`` w (default: the bundle's);
    ``noise_seeds`` K > 1: the instrument is run again with the noise seeds seed + 1 … seed + K − 1 (the real
    cines' readings and the VAE reconstructions computed once) and metrics.json's ``over_noise_seeds`` holds the
    mean, spread and range of the generator's numbers over the K seeds; the rest is ``seed``'s;
    ``max_baseline``: the floors and baselines are measured on the first min(test, max_baseline) test
    subjects (None: all), the generated cines on all of them (``measure_instrument``);
    ``turing``: a Turing study folder (``ecgflowcmr turing create``) whose scores join the report;
    ``downstream``: a finished ``ecgflowcmr downstream`` folder whose tables and plots join it."""
    from ecgflowcmr.evaluation.instrument import Cohort
    from ecgflowcmr.evaluation.report import write_report
    from ecgflowcmr.pipeline import load_pipeline

    check_options(seg_config, weights, max_baseline)
    if noise_seeds < 1:
        raise InputError("--noise-seeds", f"must be ≥ 1, got {noise_seeds}")
    downstream_section = None
    if downstream is not None:  # read before the long work: a wrong folder fails at once
        from ecgflowcmr.downstream.report import report_section as downstream_report_section

        downstream_section = downstream_report_section(downstream)
    rank = join_process_group()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = load_pipeline(model)
    pipe.sampling = pipe.sampling_settings(method=sampler, guidance=guidance)  # the bundle's, but what is given
    seg, seg_seconds = ensure_segmenter(data, Path(segmenter) if segmenter is not None else out / "segmenter",
                                        seg_config, given=segmenter is not None)
    scorers = Scorers.load(weights, fid_frames) if rank == 0 else None
    shared: dict[Any, Any] = {}  # the real cines' readings and the VAE reconstructions, for every noise seed
    measured = measure_model(pipe, model, data, seg, scorers, seed=seed, steps=steps, batch_size=batch_size,
                             max_test=max_test, max_train=max_train, fid_frames=fid_frames,
                             extra_timings={"segmenter_training_s": seg_seconds}, shared=shared,
                             max_baseline=max_baseline)
    over_seeds = _other_noise_seeds(pipe, data, seg, range(seed + 1, seed + noise_seeds), shared, steps=steps,
                                    batch_size=batch_size, max_test=max_test, max_train=max_train,
                                    max_baseline=max_baseline)
    if measured is None:  # not rank 0: its share is with rank 0
        return None
    metrics, result = measured
    if noise_seeds > 1:
        from ecgflowcmr.evaluation.instrument import noise_seed_summary

        headlines, seconds = over_seeds
        metrics["over_noise_seeds"] = noise_seed_summary(list(range(seed, seed + noise_seeds)),
                                                         [result.headline, *headlines])
        metrics["speed"]["timings_s"]["other_noise_seeds_s"] = seconds
    metrics["speed"]["timings_s"]["before_report_s"] = time.perf_counter() - start
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
    turing_markdown = None
    if turing is not None:
        from ecgflowcmr.turing import report_section

        turing_markdown = report_section(turing) or f"The study {turing} has no answers yet."
    test = Cohort.from_store(data, "test", max_test, lazy=True)  # the report reads a few ECGs, no cines
    write_report(out, metrics, result, test.ecgs, test.subject_ids, n_examples=examples,
                 turing_markdown=turing_markdown, downstream=downstream_section)
    return out / "metrics.json"


def _other_noise_seeds(pipe: Any, data: str | Path, seg: Any, seeds: range, shared: dict[Any, Any],
                       **options: Any) -> tuple[list[dict[str, float | None]], float]:
    """(the instrument's headline for each of ``seeds``, seconds): every rank takes its share of each seed's
    generation; only rank 0's headlines are filled."""
    from ecgflowcmr.evaluation.instrument import measure_instrument

    start = time.perf_counter()
    headlines = []
    for s in seeds:
        result = measure_instrument(pipe, data, seg, seed=s, shared=shared, **options)
        if result is not None:
            headlines.append(result.headline)
    return headlines, time.perf_counter() - start


def check_options(seg_config: str, weights: str | Path | None,
                  max_baseline: int | None = DEFAULT_MAX_BASELINE) -> None:
    """The options every evaluation checks before any work: a known segmenter preset, a weights folder,
    a usable ``--max-baseline``."""
    from ecgflowcmr.evaluation.instrument import baseline_items
    from ecgflowcmr.evaluation.segmentation import PRESETS

    baseline_items(3, max_baseline)
    if seg_config not in PRESETS:
        raise InputError("--seg-config", f"unknown preset {seg_config!r} (choose from {', '.join(PRESETS)})")
    if weights is not None and not Path(weights).is_dir():
        raise InputError(weights, "--weights must be a folder")


def join_process_group() -> int:
    """Under torchrun (WORLD_SIZE > 1) join the gloo process group once; returns this process's rank."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank() if dist.is_initialized() else 0


def ensure_segmenter(data: str | Path, seg_dir: Path, seg_config: str, *, given: bool) -> tuple[Any, float]:
    """(the segmenter in ``seg_dir``, seconds spent training it here): a folder the user ``given`` must hold
    one; otherwise rank 0 trains one on the store's real training cines when missing, the others wait."""
    import torch.distributed as dist

    from ecgflowcmr.evaluation.segmentation import load_segmenter, train_segmenter

    seconds = 0.0
    if not (seg_dir / "model.safetensors").exists():
        if given:
            raise InputError(seg_dir, "no trained segmenter here (model.safetensors missing)")
        if not dist.is_initialized() or dist.get_rank() == 0:
            t = time.perf_counter()
            train_segmenter(data, seg_dir, seg_config)
            seconds = time.perf_counter() - t
        if dist.is_initialized():
            dist.barrier()
    return load_segmenter(seg_dir), seconds


@dataclass
class Scorers:
    """The standard-weight networks of Table 1 (each None with the reason when its weights are missing)."""

    lpips: Any
    lpips_why: str | None
    i3d: Any
    i3d_why: str | None
    inception: Any
    inception_why: str | None

    @classmethod
    def load(cls, weights: str | Path | None, fid_frames: int) -> Scorers:
        from ecgflowcmr.evaluation.feature_networks import InceptionFeatures, load_i3d, load_lpips, try_load

        lpips, lpips_why = try_load(lambda: load_lpips(weights))
        i3d, i3d_why = try_load(lambda: load_i3d(weights))
        inception, inception_why = (try_load(lambda: InceptionFeatures(weights)) if fid_frames > 0
                                    else (None, "disabled (--fid-frames 0)"))
        return cls(lpips, lpips_why, i3d, i3d_why, inception, inception_why)


def measure_model(pipe: Any, model: str | Path, data: str | Path, seg: Any, scorers: Scorers | None, *,
                  seed: int = 0, steps: int | None = None, batch_size: int = 8, max_test: int | None = None,
                  max_train: int | None = None, fid_frames: int = 5,
                  extra_timings: dict[str, float] | None = None,
                  shared: dict[Any, Any] | None = None,
                  table1: tuple[str, ...] | None = None,
                  max_baseline: int | None = DEFAULT_MAX_BASELINE) -> tuple[dict[str, Any], Any] | None:
    """The instrument and Table 1 for a loaded pipeline: (the metrics.json tree, the ``InstrumentResult``) on
    rank 0, None on the other ranks (which share the generation and segmentation under torchrun).
    ``model``: what metrics.json names as the model; ``scorers``: loaded on rank 0 (``Scorers.load``);
    ``shared``: readings kept across models sharing the store, segmenter and VAE (``measure_instrument``);
    ``table1``: the sources whose Table 1 metrics are computed (default: the generated cines and every
    baseline; the real-vs-real floor always); ``max_baseline``: the baselines and the floor are measured on
    the first min(N, max_baseline) test subjects (None: all), the generated cines on all N."""
    import numpy as np

    from ecgflowcmr.evaluation.instrument import Cohort, baseline_items, measure_instrument
    from ecgflowcmr.evaluation.quality import quality_metrics

    result = measure_instrument(pipe, data, seg, seed=seed, steps=steps, batch_size=batch_size,
                                max_test=max_test, max_train=max_train, shared=shared, max_baseline=max_baseline)
    if result is None or scorers is None:  # not rank 0: its share of the work is with rank 0
        return None
    t = time.perf_counter()
    n_test = len(result.cines["real"])
    nb = baseline_items(n_test, max_baseline)
    train = Cohort.from_store(data, "train", nb, lazy=True)
    if len(train.cines01) < nb:
        raise InputError(data, f"the real-vs-real floor pairs each of {nb} test subjects with a training cine, but "
                               f"the train split has {len(train.cines01)}; use --max-baseline or --max-test")
    sources = {k: v if k == "generated" else v[:nb] for k, v in result.cines.items() if k != "real"}
    sources["template_only"] = np.repeat(result.template_cine, nb, axis=0)
    if table1 is not None:
        sources = {k: v for k, v in sources.items() if k in table1}
    s = scorers
    quality = quality_metrics(result.cines["real"], sources, train.cines01,
                              lpips=s.lpips[0] if s.lpips else None, lpips_info=s.lpips[1] if s.lpips else s.lpips_why,
                              inception=s.inception,
                              inception_info=s.inception.info() if s.inception else s.inception_why,
                              i3d=s.i3d[0] if s.i3d else None, i3d_info=s.i3d[1] if s.i3d else s.i3d_why,
                              fid_frames=max(fid_frames, 1), floor_items=nb)
    quality_seconds = time.perf_counter() - t

    seg_metrics_path = seg.folder / "metrics.json" if seg.folder is not None else None
    timings = {**result.timings, **(extra_timings or {}), "quality_s": quality_seconds,
               **{f"quality_{k}": v for k, v in quality.pop("timings_s").items()}}
    settings = pipe.sampling_settings(steps)
    metrics: dict[str, Any] = {
        "model": str(model),
        "data": str(data),
        "speed": {
            "seconds_per_video": {
                "value": result.timings["generate_test_s"] / max(n_test, 1),
                "definition": f"wall time of generating the {n_test} test cines from their ECGs (batch "
                              f"{batch_size}, sampler {settings['method']}, {settings['steps']} steps, guidance "
                              f"{settings['guidance']}) on this machine, per cine"},
            "timings_s": timings,
            "definition": "seconds per step of this evaluation on this machine",
        },
        "quality": quality,
        "instrument": {**result.metrics, "segmenter_training": json.loads(seg_metrics_path.read_text())
                       if seg_metrics_path is not None and seg_metrics_path.exists() else {}},
        "headline": result.headline,
    }
    return _finite(metrics), result


def _finite(tree: Any) -> Any:
    """Plain-JSON copy: NumPy scalars → Python numbers, ±inf and NaN → null (strict JSON has neither; the
    definitions say when a value is unbounded, e.g. PSNR of identical cines)."""
    import math

    import numpy as np

    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_finite(v) for v in tree]
    if isinstance(tree, np.generic):
        tree = tree.item()
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree
