"""``ecgflowcmr downstream``: make the synthetic cines with ``generate``, then run the downstream experiment.

Output folder::

    OUT/synthetic/<source>/files/<shard>/<subject_id>.nii.gz   generate's resumable, sharded output
    OUT/synthetic/<source>/pack/cines.npy, subjects.csv        the same cines read back with read_cine
    OUT/runs/fold<k>/<method>/pretrain/, <task>/               one training run each (resumable)
    OUT/runs/shared/<method>/pretrain/                         instead, with a held-out pretraining split
    OUT/results.csv, results.json, tables.md, plots/*.png

Sources: ``ecg`` (the bundle on each ECG-only subject's own ECG), the controls ``template`` (the same
bundle with its learned "no ECG" condition: the noisy template refined without an ECG), ``shuffled``
(another ECG-only subject's ECG), ``ablation:NAME`` (another bundle, e.g. trained without the
template or phase alignment) and ``cines:NAME`` (cines of the same ECG-only subjects that the user
supplies, ``DIR/<subject_id>.nii.gz`` or generate's ``DIR/<shard>/<subject_id>.nii.gz``: another
generator's output, or on the phantom the subjects' true cines, ``phantom --ecg-only-cines``, the ceiling
a perfect generator would reach). Every generated source uses the same ECG-only subjects and the same
noise seed per subject, so sources differ only in what conditions the flow. Only as many ECG-only subjects are
generated as the largest mix needs (plus 5 % for ECGs that fail).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.commands.generate import SUFFIX, generate, shard_of
from ecgflowcmr.config import load_config
from ecgflowcmr.downstream import DownstreamConfig, SyntheticPool, run_downstream
from ecgflowcmr.downstream.cohort import cohorts
from ecgflowcmr.downstream.experiment import synthetic_needed
from ecgflowcmr.downstream.plan import to_generate
from ecgflowcmr.downstream.synthetic import pack_pool
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.manifest import read_manifest
from ecgflowcmr.training import distributed as dist


def downstream(model: Path, data: Path, ecg_only: Path | None, out: Path, *, mix: list[float] | None = None,
               tasks: list[str] | None = None, controls: list[str] | None = None,
               ablations: dict[str, Path] | None = None, cines: dict[str, Path] | None = None,
               config: str = "tiny", sets: list[str] | None = None, batch_size: int = 8) -> list[Path]:
    """Generate what is missing, then pretrain, fine-tune and score every fold (all resumable)."""
    overrides = list(sets or [])
    if mix is not None:
        overrides.append(f"mix=[{', '.join(f'{m:g}' for m in mix)}]")
    if tasks is not None:
        overrides.append(f"tasks=[{', '.join(tasks)}]")
    if controls is not None:
        overrides.append(f"controls=[{', '.join(controls)}]")
    cfg = load_config(DownstreamConfig, "downstream", config, overrides)
    dist.setup_distributed(cfg.finetune.device)  # under torchrun: one process group for every run
    try:
        return _downstream(cfg, Path(model), Path(data), ecg_only, Path(out), ablations or {}, cines or {},
                           batch_size)
    finally:
        dist.teardown_distributed()


def _downstream(cfg: DownstreamConfig, model: Path, data: Path, ecg_only: Path | None, out: Path,
                ablations: dict[str, Path], supplied: dict[str, Path], batch_size: int) -> list[Path]:
    subjects, reserved = cohorts(data, cfg.folds, cfg.seed, cfg.pretrain_split)
    need = synthetic_needed(cfg, subjects, reserved)
    pools: dict[str, SyntheticPool] = {}
    meta: dict[str, Any] = {"model": str(model), "ecg_only": str(ecg_only), "generation": {}, "unavailable": {}}
    if need > 0:
        if ecg_only is None:
            raise InputError("--ecg-only", f"mix {max(cfg.mix):g} needs synthetic cines: give the ECG-only manifest")
        chosen = choose_ecg_only(ecg_only, {s.subject_id for s in [*subjects, *reserved]}, need, cfg.seed)
        sources: dict[str, tuple[Path, dict[str, Any]]] = {"ecg": (Path(model), {})}
        if "template" in cfg.controls:
            sources["template"] = (Path(model), {"null_condition": True})
        if "shuffled" in cfg.controls:
            sources["shuffled"] = (Path(model), {"shuffle_seed": cfg.seed + 1})
        for name, bundle in ablations.items():
            sources[f"ablation:{name}"] = (Path(bundle), {})
        for source, (bundle, options) in sources.items():
            folder = out / "synthetic" / source.replace(":", "-")
            print(f"generating {len(chosen)} cines: {source}", file=sys.stderr, flush=True)
            try:
                summary = generate(bundle, ecg_only, folder / "files", formats=["nii"], batch_size=batch_size,
                                   steps=cfg.generate_steps or None, seed=cfg.seed, subjects=chosen, **options)
            except InputError as err:  # e.g. a flow without a null condition: that control is unavailable
                if source == "ecg":
                    raise
                meta["unavailable"][source] = str(err)
                print(f"{source}: unavailable ({err})", file=sys.stderr)
                continue
            meta["generation"][source] = {"generated": summary.generated, "already_there": summary.skipped_existing,
                                          "failed": summary.failed, "seconds": round(summary.seconds, 2)}
            dist.barrier()  # under torchrun each rank generated its share: wait for all of them
            files = [(sid, folder / "files" / shard_of(sid) / f"{sid}{SUFFIX['nii']}") for sid in chosen]
            pools[source] = packed(source, files, folder / "pack")
        for name, given in supplied.items():
            source = f"cines:{name}"
            if not Path(given).is_dir():
                raise InputError(given, f"--cines {name}: not a folder of cines")
            files = [(sid, supplied_file(Path(given), sid)) for sid in chosen]
            pools[source] = packed(source, files, out / "synthetic" / f"cines-{name}" / "pack")
            meta["generation"][source] = {"supplied": str(given), "found": len(pools[source].subject_ids),
                                          "needed": len(chosen)}
    return run_downstream(cfg, data, pools, out, meta=meta)


def packed(source: str, files: list[tuple[str, Path]], folder: Path) -> SyntheticPool:
    """Rank 0 packs the cines once; then every rank maps the finished pack."""
    if dist.is_main():
        pack_pool(source, files, folder)
    dist.barrier()
    return pack_pool(source, files, folder)


def supplied_file(folder: Path, subject_id: str) -> Path:
    """A supplied cine: ``folder/<id>.nii.gz``, else generate's sharded ``folder/<shard>/<id>.nii.gz``."""
    flat = folder / f"{subject_id}{SUFFIX['nii']}"
    return flat if flat.exists() else folder / shard_of(subject_id) / flat.name


def choose_ecg_only(manifest_path: Path, real_ids: set[str], need: int, seed: int) -> list[str]:
    """``need`` (+5 %) ECG-only subjects in a seeded order: rows of split ``ecg_only`` when the manifest
    has any (else every row), never a subject of the real cohort."""
    manifest = read_manifest(manifest_path, required=("subject_id", "ecg_path"))
    rows = manifest.rows
    if any(r.get("split") == "ecg_only" for r in rows):
        rows = [r for r in rows if r.get("split") == "ecg_only"]
    ids = sorted({r["subject_id"] for r in rows} - real_ids)
    if len(ids) < need:
        raise InputError(manifest_path, f"{len(ids)} ECG-only subjects outside the real cohort; the largest "
                         f"mix needs {need}")
    order = np.random.default_rng([seed, 4]).permutation(len(ids))
    return sorted(ids[j] for j in order[:min(len(ids), to_generate(need))])
