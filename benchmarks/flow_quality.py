"""Does the flow generate cines that look real and follow their ECG? Flow variants side by side, held-out subjects.

Trains each flow variant (``name:key=value,...`` with ``ecgflowcmr train flow`` ``--set`` keys on top of a
preset) for each seed with the project's own engine on the latents of a training store, encoded once by
frozen PA-MAE and VAE runs, then generates every subject of a held-out store (a phantom cohort of a seed no
training used) **with its own noise** (seed = item index, as ``generate`` over a manifest) and prints one
table row per (variant, seed), beside the template-only and retrieval baselines and the real cines:

latent space (every held-out item)
  ``own>other``  fraction of pairs (i, j ≠ i) with ‖ẑ_i − z_i‖ < ‖ẑ_i − z_j‖ (0.5: the ECG tells nothing)
  ``dx real→gen`` balanced accuracy of a diagnosis classifier (PCA + logistic regression) trained on real
                 training latents, applied to generated held-out latents (realism; compare ``real→real``)
  ``dx gen→gen``  the same classifier trained on generated latents of training subjects, scored on generated
                 held-out latents (does the sample carry the ECG's information? ceiling ``ECG``)
  ``turing AUC`` 5-fold cross-validated AUC of a classifier telling generated from real held-out latents
                 (0.5: indistinguishable)
pixel space (the first ``--decode`` held-out items, decoded by the VAE)
  ``PSNR``       to the subject's own real cine (dB); the template's is on its row
  ``sharp``      mean spatial gradient magnitude of generated frames over that of the real frames
  ``dx px``      a diagnosis classifier trained on real training cines (24×24 per frame), applied to the
                 decoded cines (realism in pixels)
  ``FAC ρ``      Spearman ρ between the bright-area fractional change (blood pool proxy) of generated and
                 real cines; ceiling: ridge regression from the ECG features
  ``ES err``     end-systolic frame error (frames, ``evaluation.conditioning``) with the own ECG, and with
                 another subject's ECG (same noise) after the slash

Not a test: a measurement. Seconds per training run and parameters are printed too.

Usage::

    python benchmarks/flow_quality.py --train-store S --test-store T --pamae RUN --vae RUN --out DIR \
        [--variants "base:" "clean:model.prediction=clean" ...] [--seeds 0 1] [--preset tiny] [--decode 48]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecgflowcmr.bundle import CONFIG_FILE, WEIGHTS_FILE, load_model, load_weights, read_template
from ecgflowcmr.config import dump_yaml, load_config
from ecgflowcmr.evaluation.conditioning import circular_frame_error, es_frame
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.flow.prior import LinearPrior
from ecgflowcmr.flow.sampler import sample
from ecgflowcmr.models.dit import count_parameters
from ecgflowcmr.store import latents
from ecgflowcmr.store.prepared import StoreDataset, cine_from_uint8
from ecgflowcmr.training.loop import Setup, fit
from ecgflowcmr.training.seeding import Purpose, derive_seed, seed_everything
from ecgflowcmr.training.stages import flow as flow_stage

# --------------------------------------------------------------------------------------------------
# Data: latents and ECG tokens (encoded once), real cines and labels
# --------------------------------------------------------------------------------------------------


def encoded(store: Path, split: str, every: int, out: Path, pamae: Path, vae: Path) -> latents.LatentPairs:
    """Items 0, every, 2·every, … of a split encoded by the flow stage's own encoder, cached in ``out``."""
    folder = out / f"{split}-every{every}"
    key = latents.cache_key(store, split, pamae / WEIGHTS_FILE, vae / WEIGHTS_FILE, (pamae / CONFIG_FILE, vae / CONFIG_FILE))
    if not latents.cache_is_current(folder, key):
        nets = flow_stage.load_frozen(pamae, vae, torch.device("cpu"))
        out.mkdir(parents=True, exist_ok=True)
        latents.encode_split(store, split, *nets, 8, torch.device("cpu"), folder, key, rank=0, world=every)
    return latents.LatentPairs([folder])


def real_cines(store: Path, split: str, index: np.ndarray) -> np.ndarray:
    """(n, 50, 96, 96) float32 in [0, 1] of the given store items."""
    ds = StoreDataset(store, split, fields=("cine",))
    return np.stack([(cine_from_uint8(ds.array("cine")[i]) + 1) / 2 for i in index]).astype(np.float32)


def real_features(store: Path, split: str, index: np.ndarray, chunk: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_features, bright_area_change) of real cines, read a chunk at a time."""
    parts = [real_cines(store, split, index[i : i + chunk]) for i in range(0, len(index), chunk)]
    return (np.concatenate([pixel_features(p) for p in parts]),
            np.concatenate([bright_area_change(p) for p in parts]))


def labels(store: Path, split: str, index: np.ndarray) -> np.ndarray:
    rows = StoreDataset(store, split, fields=()).rows
    return np.array([rows[i]["diagnosis"] for i in index])


# --------------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------------


def classifier(components: int = 32):
    return make_pipeline(StandardScaler(), PCA(components, random_state=0), StandardScaler(),
                         LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced"))


def flat(z: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=np.float32).reshape(len(z), -1)


def pixel_features(cines: np.ndarray) -> np.ndarray:
    """(n, 50, 96, 96) → (n, 25·24·24): every second frame, 4×4 mean-pooled."""
    x = torch.from_numpy(cines[:, ::2])
    return torch.nn.functional.avg_pool2d(x, 4).reshape(len(cines), -1).numpy()


def own_vs_other(gen: np.ndarray, real: np.ndarray) -> float:
    """Fraction of pairs (i, j ≠ i) with d(gen_i, real_i) < d(gen_i, real_j), Euclidean."""
    d = torch.cdist(torch.from_numpy(gen), torch.from_numpy(real)).numpy()  # (n, n)
    own = np.diag(d)[:, None]
    mask = ~np.eye(len(d), dtype=bool)
    return float((own < d)[mask].mean())


def turing_auc(gen: np.ndarray, real: np.ndarray) -> float:
    x = np.concatenate([gen, real])
    y = np.r_[np.ones(len(gen)), np.zeros(len(real))]
    clf = make_pipeline(StandardScaler(), PCA(16, random_state=0), LogisticRegression(max_iter=2000, C=0.1))
    p = cross_val_predict(clf, x, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def sharpness(cines: np.ndarray) -> float:
    """Mean spatial gradient magnitude of (n, T, H, W) frames."""
    gy, gx = np.diff(cines, axis=2)[:, :, :, :-1], np.diff(cines, axis=3)[:, :, :-1, :]
    return float(np.sqrt(gx**2 + gy**2).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def bright_area_change(cines: np.ndarray, level: float = 0.6) -> np.ndarray:
    """(n, T, H, W) → (n,) (max − min)/max over frames of the bright (blood) area in the central 64×64."""
    c = cines[:, :, 16:80, 16:80]
    area = (c > level).reshape(len(c), c.shape[1], -1).sum(-1).astype(np.float64)  # (n, T)
    return (area.max(1) - area.min(1)) / np.maximum(area.max(1), 1)


# --------------------------------------------------------------------------------------------------
# Training and generation
# --------------------------------------------------------------------------------------------------


def train_variant(sets: list[str], preset: str, seed: int, train_pairs, template: torch.Tensor,
                  run_dir: Path) -> tuple[FlowMatching, float]:
    cfg = load_config(flow_stage.RunConfig, "flow", preset, [*sets, f"train.seed={seed}", "train.val_every=0"])
    seed_everything(derive_seed(cfg.train.seed, Purpose.INIT))
    first = train_pairs[0]
    config = flow_stage.fit_to_upstream(cfg.model, first["z1"][None], first["cond"][None])
    model = FlowMatching(config, template if config.use_template else None,
                         flow_stage.condition_statistics(train_pairs) if config.standardise_condition else None)
    start = time.perf_counter()
    if model.prior is not None:
        flow_stage.fit_prior(model, train_pairs, cfg.stage.prior_max_items)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resumed one
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    fit(Setup(model=model, train_set=train_pairs), cfg.train, run_dir, run_config=cfg)
    seconds = time.perf_counter() - start
    return load_weights(model, run_dir).eval(), seconds


@torch.no_grad()
def generate_latents(model: FlowMatching, cond: torch.Tensor, seeds: np.ndarray, batch: int = 32) -> torch.Tensor:
    """ẑ1 (n, C, T, h, w): item k starts from template + α·ε with ε from its own seed."""
    cfg = model.config
    out = []
    for start in range(0, len(cond), batch):
        part = slice(start, start + batch)
        z0 = torch.cat([model.initial_state(1, torch.Generator().manual_seed(int(s))) for s in seeds[part]])  # + Δ(c) in sample
        out.append(sample(model, cond[part], steps=cfg.sample_steps, method=cfg.sample_method,
                          guidance=cfg.sample_guidance, z0=z0))
    return torch.cat(out)


@torch.no_grad()
def decode(vae, z: torch.Tensor, batch: int = 8) -> np.ndarray:
    return np.concatenate([((vae.decode_latent(z[i : i + batch])[:, 0] + 1) / 2).numpy()
                           for i in range(0, len(z), batch)]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def sampling_fields(config) -> dict:
    """The sampling defaults of a FlowConfig (what a variant may change without retraining)."""
    return {k: getattr(config, k) for k in ("sample_steps", "sample_method", "sample_guidance")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-store", type=Path, required=True)
    ap.add_argument("--test-store", type=Path, required=True, help="held-out cohort; its 'test' split is used")
    ap.add_argument("--pamae", type=Path, required=True)
    ap.add_argument("--vae", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--variants", nargs="+", default=["base:"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--decode", type=int, default=48, help="held-out items decoded for the pixel measures")
    ap.add_argument("--no-baselines", dest="baselines", action="store_false", help="skip the reference rows")
    ap.add_argument("--train-every", type=int, default=1, help="train on items 0, k, 2k, … of the training split")
    ap.add_argument("--gen-train", type=int, default=400, help="training subjects generated for 'dx gen→gen'")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    train_pairs = encoded(args.train_store, "train", args.train_every, args.out / "cache", args.pamae, args.vae)
    train = train_pairs.tensors()
    test = encoded(args.test_store, "test", 1, args.out / "cache", args.pamae, args.vae).tensors()
    template = read_template(args.vae)
    vae = load_model(args.vae, "vae")
    n_dec = min(args.decode, len(test["z1"]))
    y_tr = labels(args.train_store, "train", train["index"].numpy())
    y_te = labels(args.test_store, "test", test["index"].numpy())
    g = min(args.gen_train, len(train["z1"]))
    real_te_px = real_cines(args.test_store, "test", test["index"][:n_dec].numpy())
    n_px = min(600, len(train["z1"]))
    px_tr, fac_tr = real_features(args.train_store, "train", train["index"][:n_px].numpy())
    resid = (train["z1"] - template).transpose(0, 1).reshape(template.shape[0], -1)
    print(f"latents: train {tuple(train['z1'].shape)}, held-out {tuple(test['z1'].shape)}; "
          f"std per channel of z1: {[round(v, 3) for v in train['z1'].transpose(0, 1).reshape(template.shape[0], -1).std(1).tolist()]}, "
          f"of z1 − template: {[round(v, 3) for v in resid.std(1).tolist()]}")

    # references: classifiers on real data, the ECG ceiling, the template and retrieval baselines
    clf_lat = classifier().fit(flat(train["z1"]), y_tr)
    clf_px = classifier().fit(px_tr, y_tr[:n_px])
    ecg_tr, ecg_te = flat(train["cond"]), flat(test["cond"])
    fac_te = bright_area_change(real_te_px)
    ridge = make_pipeline(StandardScaler(), PCA(32, random_state=0), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    ridge.fit(ecg_tr[:n_px], fac_tr)
    es_real = es_frame(real_te_px)
    ceiling = {"dx ECG": balanced_accuracy_score(y_te, classifier().fit(ecg_tr, y_tr).predict(ecg_te)),
               "FAC ρ ECG": spearmanr(ridge.predict(ecg_te[:n_dec]), fac_te).statistic}
    nearest = torch.cdist(torch.from_numpy(ecg_te), torch.from_numpy(ecg_tr)).argmin(1)
    prior = LinearPrior(tuple(test["cond"].shape[1:]), tuple(template.shape), FlowConfig.prior_components,
                        FlowConfig.prior_time_bins)
    prior.fit(train["z1"] - template, train["cond"])
    baselines = {"template": template.expand_as(test["z1"]).clone(), "retrieval": train["z1"][nearest],
                 "ECG linear prior (no flow)": template + prior(test["cond"]), "real (VAE recon)": test["z1"].clone()}

    rows = []

    def measure(name: str, z_te: torch.Tensor, z_tr: torch.Tensor | None, z_swap: torch.Tensor | None,
                extra: dict) -> None:
        gen_lat = flat(z_te)
        px = decode(vae, z_te[:n_dec])
        row = {"variant": name, **extra,
               "own>other": own_vs_other(gen_lat, flat(test["z1"])),
               "dx real→gen": balanced_accuracy_score(y_te, clf_lat.predict(gen_lat)),
               "dx gen→gen": (balanced_accuracy_score(y_te, classifier().fit(flat(z_tr), y_tr[:g]).predict(gen_lat))
                              if z_tr is not None else float("nan")),
               "turing AUC": turing_auc(gen_lat, flat(test["z1"])),
               "PSNR": float(psnr(px, real_te_px).mean()),
               "sharp": sharpness(px) / sharpness(real_te_px),
               "dx px": balanced_accuracy_score(y_te[:n_dec], clf_px.predict(pixel_features(px))),
               "FAC ρ": spearmanr(bright_area_change(px), fac_te).statistic,
               "ES err": float(circular_frame_error(es_frame(px), es_real, 50).mean())}
        if z_swap is not None:
            row["ES swap"] = float(circular_frame_error(es_frame(decode(vae, z_swap[:n_dec])), es_real, 50).mean())
        rows.append(row)
        (args.out / "rows.jsonl").open("a").write(json.dumps(row, default=float) + "\n")
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)

    print(json.dumps({"dx real→real": balanced_accuracy_score(y_te, clf_lat.predict(flat(test["z1"]))),
                      "dx px real→real": balanced_accuracy_score(y_te[:n_dec], clf_px.predict(pixel_features(real_te_px))),
                      **ceiling}), flush=True)
    for name, z in baselines.items() if args.baselines else ():
        measure(name, z, None, None, {})

    seeds_te = np.arange(len(test["z1"]))
    seeds_tr = 10**6 + np.arange(g)
    trained: dict[tuple, tuple[FlowMatching, float]] = {}  # variants differing only in sampling share a model
    for spec in args.variants:
        name, _, rest = spec.partition(":")
        sets = [s for s in rest.split(",") if s]
        training_sets = tuple(sorted(s for s in sets if not s.startswith("model.sample_")))
        for seed in args.seeds:
            if (training_sets, seed) not in trained:
                trained[training_sets, seed] = train_variant(list(training_sets), args.preset, seed, train_pairs,
                                                             template, args.out / "runs" / f"{name}-s{seed}")
            model, seconds = trained[training_sets, seed]
            wanted = load_config(flow_stage.RunConfig, "flow", args.preset, sets).model
            model.config = dataclasses.replace(model.config, **sampling_fields(wanted))
            t = time.perf_counter()
            z_te = generate_latents(model, test["cond"], seeds_te)
            z_swap = generate_latents(model, test["cond"].roll(1, 0)[:n_dec], seeds_te[:n_dec])
            z_tr = generate_latents(model, train["cond"][:g], seeds_tr)
            gen_s = (time.perf_counter() - t) / (len(z_te) + len(z_swap) + g)
            measure(name, z_te, z_tr, z_swap, {"seed": seed, "train_s": round(seconds, 1),
                                               "params": count_parameters(model.dit), "s/latent": round(gen_s, 4)})
    (args.out / "results.json").write_text(json.dumps(
        {"ceiling": ceiling, "rows": rows, "variants": args.variants, "seeds": args.seeds,
         "config": dataclasses.asdict(load_config(flow_stage.RunConfig, "flow", args.preset, []))},
        indent=1, default=float))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    keys = ["variant", "seed", "train_s", "own>other", "dx real→gen", "dx gen→gen", "turing AUC", "PSNR", "sharp",
            "dx px", "FAC ρ", "ES err", "ES swap"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
