"""``ecgflowcmr evaluate --sweep SPEC``: ablations and sampler sweeps (the paper's Fig. 2a–b), each variant
trained by the project's one training loop and measured by the same evaluation as ``evaluate``.

A SPEC (YAML or JSON; docs/evaluation.md) names a trained PA-MAE run and VAE run, a flow preset, overrides
shared by every variant, the training seeds, and the variants:

- a *training* variant is a set of flow ``--set`` overrides (``model.use_template=false``, ``model.alpha=0.5``,
  ``model.cond_dropout=0``, …), optionally expanded over a ``grid`` of values, and optionally PA-MAE
  alignment overrides (``model.align_cut=uniform``: the 50 tokens resampled from the whole record instead
  of cut at the predicted cycle; the PA-MAE's weights are reused); it is trained once per seed
  (``train.seed``) with ``training.tasks.train`` on the flow stage, reusing the PA-MAE and VAE runs;
- a *sampling* variant (``from: TRAINING_VARIANT``) samples that variant's trained flows with other sampler
  settings (``steps``, ``method`` euler/heun/ancestral, ``guidance``, each a value or a list: their product): no
  training.

Every (variant, seed) is evaluated on the store's held-out split by ``commands.evaluate.measure_model`` (the
instrument with its floors, baselines and ceiling, and Table 1 of the generated cines beside the real-vs-real
floor; the baselines' Table 1 rows do not depend on the variant: ``evaluate`` any one bundle for them; the
noise of subject s is ``item_seed(seed, s)``) into
``OUT/variants/NAME-sSEED/metrics.json``; the table (``OUT/metrics.json``, ``OUT/metrics.csv``: one row per
variant and seed) and the charts (``OUT/report.html``) are written by ``evaluation.sweep_report``.

Resumable: a run folder holding ``metrics.json`` (written last by ``train``) is not trained again (an
interrupted one resumes from its latest checkpoint), and an evaluation whose ``metrics.json`` records the same
settings is not repeated. The latents are encoded once per PA-MAE variant into ``OUT/cache/`` and shared by
the run folders (``RUN/cache`` links there). Under ``torchrun`` every rank runs the sweep: training is DDP,
generation and segmentation are sharded, rank 0 writes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgflowcmr.atomic import atomic_dir, ensure_dir, write_text_atomic
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.evaluation.instrument import DEFAULT_MAX_BASELINE

SPEC_KEYS = ("pamae", "vae", "preset", "sets", "seeds", "variants")
VARIANT_KEYS = ("name", "sets", "grid", "pamae", "from", "sample")
SAMPLE_KEYS = ("steps", "method", "guidance")
PAMAE_ALIGNMENT = ("align_cut", "align_aggregate", "min_rr_s", "max_rr_s", "max_phase_drop", "fallback_window_s")
"""PA-MAE fields a variant may change without retraining it: how the 50 tokens are cut from the encoded record."""


@dataclass
class Variant:
    """One row group of the sweep: a flow to train (``parent`` None) or a sampler setting of one."""

    name: str
    sets: list[str] = field(default_factory=list)
    """Flow overrides of this variant (on top of the spec's shared ``sets``)."""
    pamae_sets: list[str] = field(default_factory=list)
    """PA-MAE alignment overrides (``model.align_cut=uniform``)."""
    parent: str | None = None
    """Sampling variants: the training variant whose flows are sampled."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Sampling variants: ``steps``, ``method``, ``guidance`` (absent: the trained flow's default)."""

    @property
    def slug(self) -> str:
        return slug(self.name)


@dataclass
class Spec:
    path: Path
    pamae: Path
    vae: Path
    preset: str
    sets: list[str]
    seeds: list[int]
    variants: list[Variant]

    def training(self) -> list[Variant]:
        return [v for v in self.variants if v.parent is None]

    def sampling(self) -> list[Variant]:
        return [v for v in self.variants if v.parent is not None]

    def flow_sets(self, variant: Variant, seed: int) -> list[str]:
        return [*self.sets, *variant.sets, f"train.seed={seed}"]


def slug(name: str) -> str:
    """A folder name for a variant name (letters, digits and ``._=,-``; the rest become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._=,-]+", "_", name).strip("_") or "_"


# --------------------------------------------------------------------------------------------------
# The SPEC file
# --------------------------------------------------------------------------------------------------


def read_spec(path: str | Path) -> Spec:
    """Parse and check a sweep SPEC (module docstring); every flow config is resolved here, so a bad key or
    value fails with one line naming the SPEC and the variant before anything is trained."""
    from ecgflowcmr.config import read_yaml

    path = Path(path)
    raw = read_yaml(path)  # YAML is a superset of JSON
    _known(raw, SPEC_KEYS, f"{path}")
    for key in ("pamae", "vae", "variants"):
        if key not in raw:
            raise ConfigError(f"{path}: {key}", "missing (see docs/evaluation.md, 'Ablations and sweeps')")
    runs = {}
    for key in ("pamae", "vae"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise ConfigError(f"{path}: {key}", f"expected the path of a trained {key} run folder")
        run = Path(raw[key]) if Path(raw[key]).is_absolute() else path.parent / raw[key]
        if not (run / "model.safetensors").is_file():
            raise InputError(f"{path}: {key}", f"{run} is not a trained {key} run (no model.safetensors)")
        runs[key] = run
    preset = raw.get("preset", "tiny")
    if not isinstance(preset, str):
        raise ConfigError(f"{path}: preset", f"expected a flow preset name or YAML path, got {preset!r}")
    shared = _strings(raw.get("sets", []), f"{path}: sets")
    seeds = raw.get("seeds", [0, 1])
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{path}: seeds", f"expected a list of distinct whole numbers ≥ 0, got {seeds!r}")
    if not isinstance(raw["variants"], list) or not raw["variants"]:
        raise ConfigError(f"{path}: variants", "expected a non-empty list of variants")
    variants: list[Variant] = []
    for i, item in enumerate(raw["variants"]):
        variants += _expand(item, f"{path}: variants[{i}]")
    spec = Spec(path, runs["pamae"], runs["vae"], preset, shared, list(seeds), variants)
    _check(spec)
    return spec


def _known(mapping: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(where, f"expected a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - set(keys))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(keys)})")


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(where, f"expected a list of KEY=VALUE overrides, got {value!r}")
    return list(value)


def _expand(item: Any, where: str) -> list[Variant]:
    """One SPEC entry → its variants (a ``grid`` or list-valued ``sample`` gives one per combination)."""
    _known(item, VARIANT_KEYS, where)
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name", "every variant needs a name")
    where = f"{where} ({name})"
    if "from" in item:
        for key in ("sets", "grid", "pamae"):
            if key in item:
                raise ConfigError(f"{where}.{key}", "a sampling variant (from:) trains nothing: give only 'sample'")
        if not isinstance(item["from"], str):
            raise ConfigError(f"{where}.from", "expected the name of a training variant")
        sample = item.get("sample")
        _known(sample, SAMPLE_KEYS, f"{where}.sample")
        if not sample:
            raise ConfigError(f"{where}.sample", "give at least one of steps, method, guidance")
        axes = {k: v if isinstance(v, list) else [v] for k, v in sample.items()}
        out = []
        for combo in itertools.product(*axes.values()):
            chosen = dict(zip(axes, combo))
            label = name if all(len(v) == 1 for v in axes.values()) else \
                f"{name}[{','.join(f'{k}={v}' for k, v in chosen.items())}]"
            out.append(Variant(label, parent=item["from"], sampling=chosen))
        return out
    if "sample" in item:
        raise ConfigError(f"{where}.sample", "sampler settings belong to a sampling variant (add from: NAME)")
    sets = _strings(item.get("sets", []), f"{where}.sets")
    pamae = _strings(item.get("pamae", []), f"{where}.pamae")
    grid = item.get("grid", {})
    _known(grid, tuple(grid) if isinstance(grid, dict) else (), f"{where}.grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.grid.{key}", f"expected a non-empty list of values, got {values!r}")
    if not grid:
        return [Variant(name, sets=sets, pamae_sets=pamae)]
    out = []
    for combo in itertools.product(*grid.values()):
        chosen = dict(zip(grid, combo))
        label = name + "[" + ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in chosen.items()) + "]"
        out.append(Variant(label, sets=[*sets, *(f"{k}={json.dumps(v)}" for k, v in chosen.items())],
                           pamae_sets=pamae))
    return out


def _check(spec: Spec) -> None:
    """Names unique (also as folders), every flow config and PA-MAE override valid, sampling variants
    pointing at a training variant whose flow allows their settings."""
    from ecgflowcmr.config import load_config
    from ecgflowcmr.limits import GUIDANCE_MAX, SAMPLER_MAX_STEPS, limit
    from ecgflowcmr.pipeline import SAMPLERS
    from ecgflowcmr.training.stages import flow as flow_stage

    seen: dict[str, str] = {}
    for v in spec.variants:
        if v.slug in seen:
            raise ConfigError(f"{spec.path}: {v.name}", f"two variants share the folder name {v.slug!r} "
                                                        f"(with {seen[v.slug]!r}); rename one")
        seen[v.slug] = v.name
    configs = {}
    for v in spec.training():
        if any(s.split("=", 1)[0].strip() == "train.seed" for s in [*spec.sets, *v.sets]):
            raise ConfigError(f"{spec.path}: {v.name}", "train.seed is set by the SPEC's seeds, not by sets")
        try:
            configs[v.name] = load_config(flow_stage.RunConfig, "flow", spec.preset, spec.flow_sets(v, 0))
            pamae_config(spec.pamae, v.pamae_sets)
        except InputError as err:
            raise ConfigError(f"{spec.path}: {v.name}", str(err)) from None
    for v in spec.sampling():
        where = f"{spec.path}: {v.name}"
        if v.parent not in configs:
            raise ConfigError(f"{where}.from", f"{v.parent!r} is not a training variant of this SPEC "
                                               f"(training variants: {', '.join(configs)})")
        steps, method = v.sampling.get("steps"), v.sampling.get("method")
        guidance = v.sampling.get("guidance")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or not 1 <= steps <= limit(SAMPLER_MAX_STEPS)):
            raise ConfigError(f"{where}.steps", f"must be a whole number in 1…{limit(SAMPLER_MAX_STEPS)}, got {steps!r}")
        if method is not None and method not in SAMPLERS:
            raise ConfigError(f"{where}.method", f"must be one of {', '.join(SAMPLERS)}, got {method!r}")
        if guidance is not None:
            if isinstance(guidance, bool) or not isinstance(guidance, int | float) or abs(guidance) > GUIDANCE_MAX:
                raise ConfigError(f"{where}.guidance", f"must be null or a number with |w| ≤ {GUIDANCE_MAX:g}")
            if configs[v.parent].model.cond_dropout == 0:
                raise ConfigError(f"{where}.guidance", f"{v.parent!r} is trained without condition dropout "
                                                       f"(model.cond_dropout=0): it has no unconditional branch")


# --------------------------------------------------------------------------------------------------
# PA-MAE alignment variants
# --------------------------------------------------------------------------------------------------


def pamae_config(pamae: Path, sets: list[str]) -> dict[str, Any]:
    """The PA-MAE run's ``config.json`` with alignment overrides applied and checked (only
    ``PAMAE_ALIGNMENT`` fields: the weights are reused, so nothing the network learned may change)."""
    from ecgflowcmr.bundle import read_config
    from ecgflowcmr.config import from_dict, merge, parse_overrides, to_dict
    from ecgflowcmr.models.pa_mae import PAMAEConfig

    raw = read_config(pamae)
    model = raw["model"] if isinstance(raw.get("model"), dict) else raw
    update = parse_overrides(sets)
    for key in update:
        if key != "model":
            raise ConfigError(key, "PA-MAE overrides are model.FIELD=VALUE")
    for key in update.get("model", {}):
        if key not in PAMAE_ALIGNMENT:
            raise ConfigError(f"model.{key}", f"a sweep reuses the PA-MAE's weights, so only its alignment "
                                              f"fields may change ({', '.join(PAMAE_ALIGNMENT)})")
    return to_dict(from_dict(PAMAEConfig, merge(model, update.get("model", {})), prefix="model."))


def pamae_key(sets: list[str]) -> str:
    """The folder name of a PA-MAE variant under ``OUT/pamae/`` and ``OUT/cache/`` (``pamae``: the spec's own)."""
    return slug(",".join(s.removeprefix("model.") for s in sets)) if sets else "pamae"


def pamae_run(spec: Spec, sets: list[str], out: Path) -> Path:
    """The PA-MAE run a variant uses: the spec's own, or ``OUT/pamae/<overrides>/`` holding a copy of its
    weights with the alignment overrides in ``config.json`` (written once; a copy, so that the latent cache,
    keyed by the weights file's path, tells the variants apart)."""
    from ecgflowcmr.bundle import CONFIG_FILE, WEIGHTS_FILE

    if not sets:
        return spec.pamae
    folder = out / "pamae" / pamae_key(sets)
    config = pamae_config(spec.pamae, sets)
    if (folder / WEIGHTS_FILE).exists() and json.loads((folder / CONFIG_FILE).read_text()) == config:
        return folder
    with atomic_dir(folder) as tmp:
        shutil.copy2(spec.pamae / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


# --------------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------------


def sweep(spec_path: str | Path, data: str | Path, out: str | Path, *, weights: str | Path | None = None,
          segmenter: str | Path | None = None, seg_config: str = "default", batch_size: int = 8,
          max_test: int | None = None, max_train: int | None = None, fid_frames: int = 5,
          max_baseline: int | None = DEFAULT_MAX_BASELINE) -> Path:
    """Train and evaluate every variant of ``spec_path`` (module docstring) on ``data`` into ``out``;
    returns ``out/metrics.json``. The evaluation options mean what they mean for ``evaluate``."""
    from ecgflowcmr.commands.evaluate import Scorers, check_options, ensure_segmenter, join_process_group
    from ecgflowcmr.evaluation.sweep_report import write_sweep
    from ecgflowcmr.store.prepared import read_store_meta

    spec = read_spec(spec_path)
    check_options(seg_config, weights, max_baseline)
    read_store_meta(data)  # a bad store fails here, before any training
    out = ensure_dir(Path(out))
    rank = join_process_group()
    options = {"batch_size": batch_size, "max_test": max_test, "max_train": max_train, "fid_frames": fid_frames,
               "max_baseline": max_baseline}
    start = time.perf_counter()
    seg, _ = ensure_segmenter(data, Path(segmenter) if segmenter is not None else out / "segmenter", seg_config,
                              given=segmenter is not None)
    scorers = Scorers.load(weights, fid_frames) if rank == 0 else None

    rows: list[dict[str, Any]] = []
    runs: dict[tuple[str, int], Path] = {}
    shared: dict[Any, Any] = {}  # the real cines' readings and VAE reconstructions: one VAE, one segmenter
    for variant in spec.training():
        pamae = _on_rank0_then_all(lambda v=variant: pamae_run(spec, v.pamae_sets, out))
        for seed in spec.seeds:
            run = out / "runs" / f"{variant.slug}-s{seed}"
            runs[variant.name, seed] = run
            _train(spec, variant, seed, data, run, pamae, out)
            rows.append(_evaluate(spec, variant, seed, run, data, out, seg, scorers, options, shared))
    for variant in spec.sampling():
        for seed in spec.seeds:
            rows.append(_evaluate(spec, variant, seed, runs[variant.parent, seed], data, out, seg, scorers, options,
                                  shared))
    if rank != 0:
        return out / "metrics.json"
    return write_sweep(out, rows, spec={"spec": str(spec.path), "data": str(data), "preset": spec.preset,
                                        "shared_sets": spec.sets, "seeds": spec.seeds,
                                        "pamae": str(spec.pamae), "vae": str(spec.vae), **options},
                       seconds=time.perf_counter() - start)


def _on_rank0_then_all(fn: Any) -> Any:
    """``fn()`` on rank 0 first (it writes), then on the other ranks (they find it written)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return fn()
    result = fn() if dist.get_rank() == 0 else None
    dist.barrier()
    return result if dist.get_rank() == 0 else fn()


def _train(spec: Spec, variant: Variant, seed: int, data: str | Path, run: Path, pamae: Path, out: Path) -> None:
    """Train one (variant, seed) into ``run`` with ``training.tasks.train`` unless it finished before; the
    run's latent cache links to the sweep's shared one for this PA-MAE."""
    from ecgflowcmr.config import dump_yaml, load_config
    from ecgflowcmr.training.stages import flow as flow_stage
    from ecgflowcmr.training.tasks import train

    sets = spec.flow_sets(variant, seed)
    wanted = dump_yaml(load_config(flow_stage.RunConfig, "flow", spec.preset, sets))
    if (run / "config.yaml").exists() and (run / "config.yaml").read_text() != wanted:
        raise ConfigError(run / "config.yaml", f"was trained with another config than variant {variant.name!r} "
                                               f"now asks for; remove the folder or rename the variant")
    if (run / "metrics.json").exists():  # written last by train(): a finished run
        return
    ensure_dir(run, "run folder")
    cache = out / "cache" / pamae_key(variant.pamae_sets)
    cache.mkdir(parents=True, exist_ok=True)
    if not (run / "cache").exists():
        with contextlib.suppress(FileExistsError):  # another rank linked it
            (run / "cache").symlink_to(os.path.relpath(cache, run), target_is_directory=True)  # OUT may move
    resume = "latest" if (run / "checkpoints").exists() else None
    train("flow", data=Path(data), out=run, config=spec.preset, sets=sets, resume=resume, pamae=pamae, vae=spec.vae)


def variant_pipeline(run: Path, variant: Variant) -> Any:
    """The bundle of ``run`` loaded with the variant's sampler settings as its defaults (checked; the trained
    flow's own for the settings the variant leaves out)."""
    from ecgflowcmr.pipeline import load_pipeline

    pipe = load_pipeline(run)
    pipe.sampling = pipe.sampling_settings(variant.sampling.get("steps"), variant.sampling.get("guidance"),
                                           variant.sampling.get("method"))
    return pipe


def _evaluate(spec: Spec, variant: Variant, seed: int, run: Path, data: str | Path, out: Path, seg: Any,
              scorers: Any, options: dict[str, Any], shared: dict[Any, Any]) -> dict[str, Any]:
    """Evaluate the flow of ``run`` (with the variant's sampler settings) unless an evaluation with the same
    settings is on disk; returns the table row (rank 0) or ``{}``."""
    import torch.distributed as dist

    from ecgflowcmr.commands.evaluate import measure_model
    from ecgflowcmr.evaluation.sweep_report import row_from_metrics

    folder = out / "variants" / f"{variant.slug}-s{seed}"
    pipe = variant_pipeline(run, variant)
    settings = pipe.sampling
    trained = variant if variant.parent is None else next(v for v in spec.training() if v.name == variant.parent)
    identity = {"variant": variant.name, "kind": "train" if variant.parent is None else "sample",
                "of": trained.name, "seed": seed, "run": str(run), "shared_sets": spec.sets, "sets": trained.sets,
                "pamae_sets": trained.pamae_sets, **{k: settings[k] for k in SAMPLE_KEYS}, **options}
    done = folder / "metrics.json"
    if done.exists() and json.loads(done.read_text()).get("sweep") == identity:
        return row_from_metrics(json.loads(done.read_text()), _resolved(run))
    measured = measure_model(pipe, run, data, seg, scorers, seed=seed, batch_size=options["batch_size"],
                             max_test=options["max_test"], max_train=options["max_train"],
                             fid_frames=options["fid_frames"], shared=shared, table1=("generated",),
                             max_baseline=options["max_baseline"])
    row: dict[str, Any] = {}
    if measured is not None:
        metrics = {"sweep": identity, **measured[0]}
        ensure_dir(folder)
        write_text_atomic(done, json.dumps(metrics, indent=2, allow_nan=False))
        row = row_from_metrics(metrics, _resolved(run))
    if dist.is_initialized():
        dist.barrier()
    return row


def _resolved(run: Path) -> dict[str, Any]:
    """What the table shows of a trained run: its flow's α, prior, template, condition dropout, the PA-MAE's
    token placement, training steps and time."""
    from ecgflowcmr.bundle import read_config

    model = read_config(run)
    flow = model.get("model", model)
    training = json.loads((run / "metrics.json").read_text()).get("training", {})
    pamae = read_config(Path(json.loads((run / "upstream.json").read_text())["pamae"]))
    return {"alpha": flow.get("alpha"), "prior": flow.get("prior"), "use_template": flow.get("use_template"),
            "cond_dropout": flow.get("cond_dropout"), "align_cut": pamae.get("model", pamae).get("align_cut"),
            "train_steps": training.get("steps"), "train_s": training.get("wall_time_s")}

