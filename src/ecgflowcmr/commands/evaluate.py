"""``ecgflowcmr evaluate``: a trained bundle on a store's held-out subjects → metrics.json, metrics.csv,
report.html.

Steps: the segmenter (``--segmenter DIR``, else ``OUT/segmenter`` from an earlier run, else trained now on
the store's real training cines and saved there) → the instrument (generation with each subject's own noise,
baselines, chamber measures, agreement, diagnosis, timing, in-domain realism) → Table 1 quality metrics for
the generated cines and each baseline, with the real-vs-real floor → the files. Under ``torchrun`` the
generation and segmentation are sharded across ranks (gloo on CPU) and rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ecgflowcmr.atomic import write_text_atomic
from ecgflowcmr.errors import InputError


def evaluate(model: str | Path, data: str | Path, out: str | Path, *, weights: str | Path | None = None,
             segmenter: str | Path | None = None, seg_config: str = "default", seed: int = 0,
             steps: int | None = None, batch_size: int = 8, max_test: int | None = None,
             max_train: int | None = None, fid_frames: int = 5, examples: int = 4,
             turing: str | Path | None = None, downstream: str | Path | None = None) -> Path:
    """Evaluate ``model`` on ``data`` into ``out`` (see the module docstring); returns ``out/metrics.json``.
    ``turing``: a Turing study folder (``ecgflowcmr turing create``) whose scores join the report;
    ``downstream``: a finished ``ecgflowcmr downstream`` folder whose tables and plots join it."""
    import numpy as np
    import torch.distributed as dist

    from ecgflowcmr.evaluation.feature_networks import InceptionFeatures, load_i3d, load_lpips, try_load
    from ecgflowcmr.evaluation.instrument import Cohort, measure_instrument
    from ecgflowcmr.evaluation.quality import quality_metrics
    from ecgflowcmr.evaluation.report import write_report
    from ecgflowcmr.evaluation.segmentation import PRESETS, load_segmenter, train_segmenter
    from ecgflowcmr.pipeline import load_pipeline

    if seg_config not in PRESETS:
        raise InputError("--seg-config", f"unknown preset {seg_config!r} (choose from {', '.join(PRESETS)})")
    if weights is not None and not Path(weights).is_dir():
        raise InputError(weights, "--weights must be a folder")
    downstream_section = None
    if downstream is not None:  # read before the long work: a wrong folder fails at once
        from ecgflowcmr.downstream.report import report_section as downstream_report_section

        downstream_section = downstream_report_section(downstream)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = load_pipeline(model)

    seg_dir = Path(segmenter) if segmenter is not None else out / "segmenter"
    seg_seconds = 0.0
    if not (seg_dir / "model.safetensors").exists():
        if segmenter is not None:
            raise InputError(seg_dir, "no trained segmenter here (model.safetensors missing)")
        if rank == 0:
            t = time.perf_counter()
            train_segmenter(data, seg_dir, seg_config)
            seg_seconds = time.perf_counter() - t
        if dist.is_initialized():
            dist.barrier()
    seg = load_segmenter(seg_dir)

    result = measure_instrument(pipe, data, seg, seed=seed, steps=steps, batch_size=batch_size,
                                max_test=max_test, max_train=max_train)
    if rank != 0:
        return out / "metrics.json"

    t = time.perf_counter()
    lpips, lpips_why = try_load(lambda: load_lpips(weights))
    i3d, i3d_why = try_load(lambda: load_i3d(weights))
    inception, inception_why = (try_load(lambda: InceptionFeatures(weights)) if fid_frames > 0
                                else (None, "disabled (--fid-frames 0)"))
    n_test = len(result.cines["real"])
    train = Cohort.from_store(data, "train", n_test)
    if len(train.cines01) < n_test:
        raise InputError(data, f"the real-vs-real floor pairs each of the {n_test} test subjects with a training "
                               f"cine, but the train split has {len(train.cines01)}; use --max-test")
    sources = {k: v for k, v in result.cines.items() if k != "real"}
    sources["template_only"] = np.repeat(result.template_cine, n_test, axis=0)
    quality = quality_metrics(result.cines["real"], sources, train.cines01,
                              lpips=lpips[0] if lpips else None, lpips_info=lpips[1] if lpips else lpips_why,
                              inception=inception, inception_info=inception.info() if inception else inception_why,
                              i3d=i3d[0] if i3d else None, i3d_info=i3d[1] if i3d else i3d_why,
                              fid_frames=max(fid_frames, 1))
    quality_seconds = time.perf_counter() - t

    seg_metrics_path = seg_dir / "metrics.json"
    test = Cohort.from_store(data, "test", max_test)
    timings = {**result.timings, "segmenter_training_s": seg_seconds, "quality_s": quality_seconds,
               **{f"quality_{k}": v for k, v in quality.pop("timings_s").items()}}
    metrics: dict[str, Any] = {
        "model": str(model),
        "data": str(data),
        "speed": {
            "seconds_per_video": {
                "value": result.timings["generate_test_s"] / max(n_test, 1),
                "definition": f"wall time of generating the {n_test} test cines from their ECGs (batch "
                              f"{batch_size}, sampler steps {steps or 'as in the bundle'}) on this machine, per cine"},
            "timings_s": timings,
            "definition": "seconds per step of this evaluation on this machine",
        },
        "quality": quality,
        "instrument": {**result.metrics, "segmenter_training": json.loads(seg_metrics_path.read_text())
                       if seg_metrics_path.exists() else {}},
        "headline": result.headline,
    }
    timings["before_report_s"] = time.perf_counter() - start
    metrics = _finite(metrics)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
    turing_markdown = None
    if turing is not None:
        from ecgflowcmr.turing import report_section

        turing_markdown = report_section(turing) or f"The study {turing} has no answers yet."
    write_report(out, metrics, result, test.ecgs, test.subject_ids, n_examples=examples,
                 turing_markdown=turing_markdown, downstream=downstream_section)
    return out / "metrics.json"


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
