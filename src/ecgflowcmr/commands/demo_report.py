"""The demo's report: ``OUT/report.html`` (real vs generated cines with the ECG beneath, conditioning
measures, loss curves, every metric with its definition) and ``OUT/metrics.json``."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.atomic import write_text_atomic

N_REPORT = 6
# Test items generated a second time, from another subject's ECG with the same noise (the conditioning
# measures): ~0.7 s per video on a 2-core CPU.
N_CONDITIONING = 16


def _loss_curves(run: Path, png: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run / "metrics.jsonl"
    if not path.exists():
        return False
    train, val = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            val.append((rec["step"], rec["val_loss"]))
        elif "loss" in rec:
            train.append((rec["step"], rec["loss"]))
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=100)
    ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val", lw=1, ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


def _frame_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM between two cines in [0, 1] (T, H, W)."""
    import torch

    from ecgflowcmr.models.image_metrics import psnr, ssim

    a = torch.from_numpy(real[None, None].astype(np.float32))
    b = torch.from_numpy(fake[None, None].astype(np.float32))
    return {"psnr_db": float(psnr(a, b).mean()), "ssim": float(ssim(a, b).mean())}


def _conditioning(out: Path, flow_run: Path, test: Any) -> dict[str, Any]:
    """Conditioning measures (``evaluation.conditioning``) on the first ``N_CONDITIONING`` generated test items:
    their cines from ``generate`` (own ECG) beside new ones from the previous item's ECG with the same noise."""
    from ecgflowcmr.commands.generate import item_seed, shard_of
    from ecgflowcmr.evaluation.conditioning import measure_conditioning
    from ecgflowcmr.io.ecg import read_ecg
    from ecgflowcmr.pipeline import load_pipeline
    from ecgflowcmr.store.prepared import cine_from_uint8

    picked = []
    for i, row in enumerate(test.rows):
        gen_path = out / "generated" / shard_of(row["subject_id"]) / f"{row['subject_id']}.npy"
        if gen_path.exists():
            picked.append((i, row, gen_path))
        if len(picked) == N_CONDITIONING:
            break
    if len(picked) < 2:
        return {"conditioning_items": {"value": len(picked), "definition": "fewer than 2 generated test items"}}
    records = [read_ecg(out / "cohort" / row["ecg_path"]) for _, row, _ in picked]  # as generate reads them
    ecgs = np.stack([record.signal for record in records])
    real = np.stack([(cine_from_uint8(test.array("cine")[i]) + 1) / 2 for i, _, _ in picked])
    own = np.stack([np.load(path) for _, _, path in picked])
    seeds = [item_seed(0, row["subject_id"]) for _, row, _ in picked]  # generate's noise (seed 0) per item
    return measure_conditioning(load_pipeline(flow_run), ecgs, seeds, real, own=own,
                                rpeaks=[record.rpeaks for record in records])


def _conditioning_html(m: dict[str, Any]) -> str:
    """A small table: ES-frame error and motion-curve correlation, own vs swapped ECG, with references."""
    if "es_frame_mae_own_ecg" not in m:
        return "<p>Not measured (fewer than 2 generated test items).</p>"
    v = {k: d["value"] for k, d in m.items()}
    return f"""<p>{v['conditioning_items']} test subjects generated twice with the same noise: from their own ECG
and from another subject's. End-systole falls at the end of the T wave, so the ES frame (the frame farthest
from end-diastole) must follow the ECG. Lower ES error and higher curve correlation with the own ECG than
with the swapped one mean the ECG steers the motion.</p>
<table><tr><td></td><td>ES frame error (frames)</td><td>motion-curve r</td></tr>
<tr><td>own ECG</td><td>{v['es_frame_mae_own_ecg']:.2f}</td><td>{v['motion_curve_corr_own_ecg']:.3f}</td></tr>
<tr><td>another subject's ECG</td><td>{v['es_frame_mae_swapped_ecg']:.2f}</td>
<td>{v['motion_curve_corr_swapped_ecg']:.3f}</td></tr>
<tr><td>no ECG: median real ES frame</td><td>{v['es_frame_mae_constant']:.2f}</td><td></td></tr>
<tr><td>another real subject</td><td>{v['es_frame_mae_other_real']:.2f}</td><td></td></tr></table>
<p>ECG-swap sensitivity {v['ecg_swap_sensitivity']:.3f} (pixel change from swapping the ECG, relative to the
difference between two real subjects). Definitions in metrics.json under "conditioning".</p>"""


def metric_rows(d: dict[str, Any], section: str = "") -> list[tuple[str, str, Any, str]]:
    """(section, name, value, definition) for every number in a metrics.json tree.

    A ``{"value", "definition"}`` dict is one metric; a dict with a ``definition`` but no ``value`` lends
    that definition to its plain numbers (``{"psnr_db": …, "ssim": …, "definition": …}``); other dicts are
    sections, their keys joined with " › ".
    """
    rows: list[tuple[str, str, Any, str]] = []
    shared = d.get("definition", "") if isinstance(d.get("definition"), str) else ""
    for key, value in d.items():
        if isinstance(value, dict) and "value" in value:
            rows.append((section, key, value["value"], str(value.get("definition", ""))))
        elif isinstance(value, dict):
            rows += metric_rows(value, f"{section} › {key}" if section else key)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            rows.append((section, key, value, shared))
    return rows


def _metrics_table(metrics: dict[str, Any]) -> str:
    """An HTML table: section, metric, value (4 significant digits), definition."""
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape(str(value)) if isinstance(value, int | str) else ""

    body = "\n".join(f"<tr><td>{html.escape(section)}</td><td>{html.escape(name)}</td><td class='num'>{shown(value)}"
                     f"</td><td class='def'>{html.escape(definition)}</td></tr>"
                     for section, name, value, definition in metric_rows(metrics))
    return f"<table><tr><th>section</th><th>metric</th><th>value</th><th>definition</th></tr>\n{body}</table>"


def write_report(out: Path, store: Path, runs: dict[str, Path], summary: Any, timings: dict[str, float],
                 evaluation: Path | None = None) -> Path:
    """report.html + metrics.json from the finished runs, the generated test split and, when given, the
    folder ``ecgflowcmr evaluate`` wrote (its Table 1, instrument tables and headline are shown here)."""
    from ecgflowcmr.store.prepared import StoreDataset

    media = out / "report_media"
    media.mkdir(exist_ok=True)
    test = StoreDataset(store, "test", fields=("ecg", "phase", "cine"))
    per_subject, blocks = _compare_generated(out, test, media)
    t = time.perf_counter()
    conditioning = _conditioning(out, runs["flow"], test)
    timings["conditioning_s"] = time.perf_counter() - t
    curves = [stage for stage, run in runs.items() if _loss_curves(run, media / f"loss_{stage}.png")]
    metrics = _demo_metrics(runs, summary, timings, per_subject, conditioning)
    evaluated = None
    if evaluation is not None and (evaluation / "metrics.json").exists():
        evaluated = json.loads((evaluation / "metrics.json").read_text())
        metrics["evaluation"] = {"headline": evaluated["headline"],
                                 "definition": f"`ecgflowcmr evaluate` of the demo bundle: every number and its "
                                               f"definition in {evaluation.name}/metrics.json"}
        if "over_noise_seeds" in evaluated:
            metrics["evaluation"]["over_noise_seeds"] = evaluated["over_noise_seeds"]
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    report = out / "report.html"
    page = _page(blocks, curves, conditioning, metrics)
    if evaluated is not None:
        page = page.replace("<h2>Does the ECG control the cine?</h2>",
                            _evaluation_html(evaluated, evaluation.name) + "<h2>Does the ECG control the cine?</h2>")
    write_text_atomic(report, page)
    return report


def _evaluation_html(evaluated: dict[str, Any], folder: str) -> str:
    """Table 1 with baselines and floors, the instrument's agreement and diagnosis (``evaluation.report``)."""
    from ecgflowcmr.evaluation.report import (
        agreement_html,
        noise_seeds_html,
        segmenter_warning,
        table1_html,
        value_table,
    )

    instrument = evaluated["instrument"]
    diagnosis = instrument["diagnosis"]
    seconds = evaluated["speed"]["seconds_per_video"]["value"]
    return f"""<h2>Evaluation (<a href="{html.escape(folder)}/report.html">full report</a>)</h2>
<p>{int(instrument['subjects']['test'])} held-out subjects, each generated with its own noise, beside the
baselines a user would pick instead and the real-vs-real floor (<code>ecgflowcmr evaluate</code>).</p>
{table1_html(evaluated['quality'], instrument['realism'], seconds)}
<h3>Does the generated heart follow its ECG?</h3>
<p>Chamber measures read by a segmenter trained on the real training cines (four-chamber areas: proxies for
short-axis volumes); each source against the subject's own real cine, beside the ECG's own ceiling.</p>
{segmenter_warning(instrument)}{agreement_html(instrument['agreement'])}
{value_table(diagnosis, 'diagnosis') if 'unavailable' not in diagnosis else f"<p>{html.escape(diagnosis['unavailable'])}</p>"}
{noise_seeds_html(evaluated.get('over_noise_seeds'))}"""


def _compare_generated(out: Path, test: Any, media: Path) -> tuple[list[dict[str, Any]], list[tuple]]:
    """Per generated test subject: PSNR/SSIM against its real cine; GIFs (real | generated, ECG beneath)
    of the first ``N_REPORT``. Returns (per-subject metrics, (subject_id, manifest row, GIF name) per GIF)."""
    from ecgflowcmr.commands.generate import shard_of
    from ecgflowcmr.signal.phase import rpeaks_from_labels
    from ecgflowcmr.store.prepared import cine_from_uint8
    from ecgflowcmr.viz.render import render_cine_video

    per_subject, blocks = [], []
    for i, row in enumerate(test.rows):
        sid = row["subject_id"]
        gen_path = out / "generated" / shard_of(sid) / f"{sid}.npy"
        if not gen_path.exists():
            continue
        fake = np.load(gen_path)
        real = (cine_from_uint8(test.array("cine")[i]) + 1) / 2
        metrics = {"subject_id": sid, "diagnosis": row.get("diagnosis", ""), **_frame_metrics(real, fake)}
        per_subject.append(metrics)
        if len(blocks) < N_REPORT:
            gif = media / f"{sid}.gif"
            render_cine_video([real, fake], gif, ecg_signal=np.asarray(test.array("ecg")[i], dtype=np.float32),
                              titles=["real", "generated"], fps=12.5,
                              rpeaks=rpeaks_from_labels(np.asarray(test.array("phase")[i], dtype=np.float32)))
            blocks.append((sid, row, gif.name))
    return per_subject, blocks


def _demo_metrics(runs: dict[str, Path], summary: Any, timings: dict[str, float], per_subject: list[dict[str, Any]],
                  conditioning: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: generated vs real, conditioning, per subject, each stage's metrics, generation speed."""
    stage_metrics = {}
    for stage, run in runs.items():
        path = run / "metrics.json"
        stage_metrics[stage] = json.loads(path.read_text()) if path.exists() else {}
    generation = {
        "videos": summary.generated,
        "failed": summary.failed,
        "seconds_per_video": summary.seconds / max(summary.generated, 1),
        "split_seconds": summary.timings,
        "definition": "wall time of `generate` over the test split on this machine, batch 8, including "
                      "reading ECGs and writing NIfTI + npy",
    }
    mean = {k: float(np.mean([m[k] for m in per_subject])) for k in ("psnr_db", "ssim")} if per_subject else {}
    return {
        "generated_vs_real": {
            **mean,
            "n": len(per_subject),
            "definition": "PSNR/SSIM between each generated cine and the real cine of the same subject "
                          "(test split, canonical 50×96×96 in [0, 1]); generation is stochastic and the ECG "
                          "only partly determines anatomy, so these are loose agreement measures, not FID/FVD",
        },
        "conditioning": conditioning,
        "per_subject": per_subject,
        "stages": stage_metrics,
        "generation": generation,
        "timings_s": timings,
    }


def _page(blocks: list[tuple], curves: list[str], conditioning: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The report's HTML."""
    rows_html = "\n".join(
        f"<figure><img src='report_media/{html.escape(gif)}' alt='{html.escape(sid)}'>"
        f"<figcaption>{html.escape(sid)} · {html.escape(row.get('diagnosis', ''))} · "
        f"HR {html.escape(row.get('heart_rate_bpm', ''))} bpm · LVEF {html.escape(row.get('lvef_pct', ''))}%"
        f"</figcaption></figure>" for sid, row, gif in blocks)
    curves_html = "\n".join(f"<img src='report_media/loss_{s}.png' alt='{s} loss'>" for s in curves)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ecgflowcmr demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} figure{{display:inline-block;margin:.5em}}
figcaption{{font-size:.85em;color:#444}} td{{padding:2px 8px;border-bottom:1px solid #eee;font-size:.85em}}
td.def{{color:#666;font-size:.78em}} td.num{{text-align:right;white-space:nowrap}}
img{{max-width:100%}}</style></head><body>
<h1>ecgflowcmr demo (phantom, tiny)</h1>
<p>Real (left) and generated (right) four-chamber cines of held-out subjects, generated from the ECG alone;
the ECG is drawn beneath with a cursor at each frame's time.</p>
{rows_html}
<h2>Does the ECG control the cine?</h2>{_conditioning_html(conditioning)}
<h2>Training</h2>{curves_html}
<h2>Metrics</h2>{_metrics_table({k: v for k, v in metrics.items() if k != "per_subject"})}
</body></html>"""
