"""The sweep's table and report: one row per (variant, seed) from each variant's evaluation metrics tree, the
mean and spread over seeds per variant, and charts (metric vs α, metric vs sampler steps for Euler and Heun,
every variant side by side), each seed drawn as a point beside the mean ± standard deviation.

Writes ``metrics.json`` (``columns``: every column's definition; ``rows``; ``summary``: per variant and
column the mean, standard deviation over seeds (ddof 1), min, max and n), ``metrics.csv`` (the rows) and a
self-contained ``report.html`` (charts inline, as ``evaluation.report`` draws them).
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.atomic import atomic_file, write_text_atomic
from ecgflowcmr.evaluation.report import STYLE, png_uri, pyplot

IDENTITY = ("variant", "kind", "of", "overrides", "seed", "alpha", "prior", "use_template", "cond_dropout",
            "align_cut", "steps", "method", "guidance", "train_steps", "train_s")
"""The columns that say what a row is: variant, training or sampling (``of``: the trained variant), the
trained variant's own overrides (``pamae:`` for the PA-MAE's), seed, the trained flow's α / prior / template /
condition dropout, the PA-MAE token placement, the sampler settings, training steps and seconds."""

COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "lv_fac_spearman": (("headline", "lv_fac_spearman_generated"),
                        "Spearman ρ between LV FAC of the generated and of the subject's own real cine (↑)"),
    "lv_fac_r2": (("instrument", "agreement", "lv_fac", "generated", "r2"),
                  "R² of the generated LV FAC as a prediction of the real one, no refit (↑)"),
    "es_frame_mae": (("headline", "es_frame_mae_own_ecg"), "end-systolic frame error with the own ECG, frames (↓)"),
    "es_frame_mae_swapped": (("headline", "es_frame_mae_swapped_ecg"),
                             "end-systolic frame error with another subject's ECG, same noise (floor)"),
    "dx_real_clf": (("headline", "diagnosis_real_trained_on_generated"),
                    "balanced accuracy of the real-trained diagnosis classifier on generated test cines (↑)"),
    "dx_gen_clf": (("headline", "diagnosis_generated_trained_on_generated"),
                   "balanced accuracy of a classifier trained on generated training cines, on generated test "
                   "cines (↑; ceiling dx_ecg)"),
    "fid_cmr": (("headline", "fid_cmr_generated"), "in-domain frame-wise Fréchet distance to real cines (↓)"),
    "fvd_cmr": (("instrument", "realism", "fvd_cmr_generated", "value"),
                "in-domain per-video Fréchet distance to real cines (↓)"),
    "sharpness_ratio": (("headline", "sharpness_ratio_generated"), "gradient magnitude over the real cines' (1 = as sharp)"),
    "real_vs_generated_auc": (("headline", "real_vs_generated_auc"),
                              "AUC of a classifier telling real from generated (0.5 = cannot tell)"),
    "identification": (("instrument", "realism", "identification_generated", "value"),
                       "how often a generated cine is nearer its own subject's real measures (0.5 = chance)"),
    "psnr_db": (("quality", "generated", "psnr_db", "value"), "PSNR against the own real cine, dB (↑)"),
    "ssim": (("quality", "generated", "ssim", "value"), "SSIM against the own real cine (↑)"),
    "motion_ratio": (("quality", "generated", "temporal_change_ratio", "value"),
                     "frame-to-frame change relative to the real cines' (1 = as much motion)"),
    "lpips": (("quality", "generated", "lpips", "value"), "LPIPS-Alex against the own real cine (↓; needs --weights)"),
    "fid": (("quality", "generated", "fid_inception", "value"), "Inception FID (↓; needs the Inception weights)"),
    "fvd": (("quality", "generated", "fvd_i3d", "value"), "I3D FVD (↓; needs --weights)"),
    "seconds_per_video": (("speed", "seconds_per_video", "value"), "generation wall time per test cine, s"),
    "lv_fac_spearman_ecg_ceiling": (("headline", "lv_fac_spearman_ecg_ceiling"),
                                    "reference: ridge from this variant's PA-MAE features to the real LV FAC"),
    "lv_fac_spearman_retrieval": (("headline", "lv_fac_spearman_retrieval"), "reference: retrieval baseline"),
    "fid_cmr_real_floor": (("headline", "fid_cmr_real_floor"), "reference: FID-CMR of real test cines"),
    "dx_ecg": (("headline", "diagnosis_ecg_trained_on_ecg"),
               "reference: the same classifier on the PA-MAE ECG features (ceiling of dx_gen_clf)"),
    "dx_chance": (("headline", "diagnosis_chance"), "reference: balanced accuracy of a constant"),
}
"""Each column: where its value sits in an evaluation's metrics.json, and what it is (the full definitions are in
``variants/NAME-sSEED/metrics.json``)."""

SHOWN = ("lv_fac_spearman", "es_frame_mae", "dx_real_clf", "dx_gen_clf", "fid_cmr", "sharpness_ratio", "psnr_db",
         "ssim", "lpips", "fid", "fvd", "seconds_per_video")
"""The columns of the report's summary table."""
CHARTED = ("lv_fac_spearman", "es_frame_mae", "dx_gen_clf", "fid_cmr", "psnr_db")
"""The columns drawn in the charts (the steps chart adds seconds_per_video)."""


def row_from_metrics(metrics: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """One table row from an evaluation's metrics tree (with its ``sweep`` identity) and the trained run's
    resolved settings (``alpha``, ``use_template``, …)."""
    sweep = metrics["sweep"]
    row: dict[str, Any] = {k: sweep.get(k) for k in ("variant", "kind", "of", "seed", "steps", "method", "guidance")}
    row["overrides"] = " ".join([*sweep.get("sets", []), *(f"pamae:{s}" for s in sweep.get("pamae_sets", []))])
    row.update({k: resolved.get(k) for k in ("alpha", "prior", "use_template", "cond_dropout", "align_cut",
                                             "train_steps", "train_s")})
    row["only_alpha"] = not sweep.get("pamae_sets") and all(s.split("=", 1)[0].strip() == "model.alpha"
                                                            for s in sweep.get("sets", []))
    for column, (path, _) in COLUMNS.items():
        node: Any = metrics
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        row[column] = float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant (in row order) and column: mean, std over seeds (ddof 1; None for one seed), min, max, n."""
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for column in COLUMNS:
            values = np.array([r[column] for r in mine if r[column] is not None], dtype=np.float64)
            entry[column] = ({"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                              "min": float(values.min()), "max": float(values.max()), "n": len(values)}
                             if len(values) else None)
        out[variant] = entry
    return out


# --------------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------------


def _series(ax: Any, rows: list[dict[str, Any]], x_key: str, column: str, label: str, colour: str) -> bool:
    """Each seed a point, the mean over seeds a line with ± one standard deviation; False if nothing to draw."""
    points = [(r[x_key], r[column]) for r in rows if r[column] is not None and r[x_key] is not None]
    if not points:
        return False
    xs = sorted({x for x, _ in points})
    ax.scatter([x for x, _ in points], [y for _, y in points], s=10, alpha=0.45, color=colour)
    means = [float(np.mean([y for x, y in points if x == v])) for v in xs]
    stds = [float(np.std([y for x, y in points if x == v], ddof=1)) if sum(x == v for x, _ in points) > 1 else 0.0
            for v in xs]
    ax.errorbar(xs, means, yerr=stds, color=colour, marker="o", ms=4, lw=1.3, capsize=3, label=label)
    return True


def _unavailable(ax: Any) -> None:
    """Say so in a panel whose metric no row has (e.g. diagnosis with one class, LPIPS without weights)."""
    if not ax.has_data():
        ax.text(0.5, 0.5, "not available", ha="center", va="center", color="0.5", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])


def _legend(axes: Any) -> None:
    """One legend, on the first panel that drew something (a metric may be unavailable for every row)."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
            return


def alpha_chart(rows: list[dict[str, Any]]) -> str | None:
    """Metric vs α over the training variants that differ from the shared config in α only (Fig. 2a)."""
    chosen = [r for r in rows if r["kind"] == "train" and r["only_alpha"] and r["alpha"] is not None]
    if len({r["alpha"] for r in chosen}) < 2:
        return None
    return _panel_row(CHARTED, "α (noise scale around the template)",
                      lambda ax, column: _series(ax, chosen, "alpha", column, "mean ± sd over seeds", "C0"))


def steps_chart(rows: list[dict[str, Any]]) -> str | None:
    """Metric vs sampler steps, one line per (trained variant, method, guidance) of the sampling variants
    (Fig. 2b: Euler vs Heun)."""
    chosen = [r for r in rows if r["kind"] == "sample"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in chosen:
        groups.setdefault((r["of"], r["method"], r["guidance"]), []).append(r)
    groups = {k: v for k, v in groups.items() if len({r["steps"] for r in v}) >= 2}
    if not groups:
        return None

    def draw(ax: Any, column: str) -> None:
        for i, ((of, method, guidance), group) in enumerate(groups.items()):
            label = f"{of}: {method}" + (f", w={guidance:g}" if guidance is not None else "")
            _series(ax, group, "steps", column, label, f"C{i}")
        ax.set_xscale("log", base=2)

    return _panel_row((*CHARTED, "seconds_per_video"), "sampler steps", draw)


def _panel_row(columns: tuple[str, ...], x_label: str, draw: Any) -> str:
    """One panel per metric column, side by side: ``draw(ax, column)`` plots it; titles, axis label, the
    'not available' mark and one legend are shared. Returns the PNG as a data URI."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.0 * len(columns), 2.7), squeeze=False)
    for ax, column in zip(axes[0], columns):
        draw(ax, column)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        _unavailable(ax)
    _legend(axes[0])
    fig.tight_layout()
    return png_uri(fig)


def variants_chart(rows: list[dict[str, Any]]) -> str:
    """Every variant side by side: seeds as points, the mean ± sd as a diamond with an error bar (the ablations;
    no bars from zero, so that differences far smaller than the values stay visible)."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CHARTED), figsize=(3.0 * len(CHARTED), 1.2 + 0.28 * len(names) + 1.5),
                             squeeze=False)
    for ax, column in zip(axes[0], CHARTED):
        for i, name in enumerate(names):
            values = [r[column] for r in rows if r["variant"] == name and r[column] is not None]
            if not values:
                continue
            ax.errorbar(np.mean(values), i, xerr=np.std(values, ddof=1) if len(values) > 1 else 0, color="C0",
                        marker="D", ms=4, capsize=3)
            ax.scatter(values, [i] * len(values), s=10, alpha=0.45, color="C0")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if column == CHARTED[0] else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(column, fontsize=9)
        _unavailable(ax)
    fig.tight_layout()
    return png_uri(fig)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return html.escape(str(value))


def summary_html(summary: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    shown = [c for c in SHOWN if any(s[c] is not None for s in summary.values())]
    head = "".join(f"<th title='{html.escape(COLUMNS[c][1])}'>{html.escape(c)}</th>" for c in shown)
    body = []
    for variant, entry in summary.items():
        first = next(r for r in rows if r["variant"] == variant)
        sampler = ", ".join(f"{k} {_fmt(first[k])}" for k in ("steps", "method", "guidance") if first[k] is not None)
        what = f"{html.escape(first['overrides'] or 'as the preset')}; α {_fmt(first['alpha'])}; {sampler}"
        cells = "".join("<td class='na'>–</td>" if entry[c] is None else
                        f"<td class='num'>{entry[c]['mean']:.3g}"
                        + (f" ± {entry[c]['std']:.2g}" if entry[c]["std"] is not None else "") + "</td>"
                        for c in shown)
        body.append(f"<tr><td>{html.escape(variant)}</td><td class='def'>{what}</td>"
                    f"<td class='num'>{len(entry['seeds'])}</td>{cells}</tr>")
    return (f"<div class='wide'><table id='sweep-summary'><tr><th>variant</th><th>settings</th><th>seeds</th>{head}"
            f"</tr>{''.join(body)}</table></div>")


def rows_html(rows: list[dict[str, Any]]) -> str:
    columns = [*IDENTITY, *(c for c in COLUMNS if any(r[c] is not None for r in rows))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td class='num'>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<div class='wide'><table id='sweep-rows'><tr>{head}</tr>{body}</table></div>"


def write_sweep(out: str | Path, rows: list[dict[str, Any]], spec: dict[str, Any], seconds: float) -> Path:
    """``out/metrics.json``, ``out/metrics.csv`` and ``out/report.html`` of a sweep; returns metrics.json."""
    out = Path(out)
    summary = summarise(rows)
    columns = {**{c: d for c, (_, d) in COLUMNS.items()},
               "definition": "one row per (variant, seed): the variant's flow trained with train.seed = seed and "
                             "evaluated on the held-out split with noise seed item_seed(seed, subject); full "
                             "definitions in variants/NAME-sSEED/metrics.json"}
    metrics = {"sweep": spec, "seconds": seconds, "columns": columns, "rows": rows, "summary": summary}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False, default=str))
    with atomic_file(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*IDENTITY, *COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    charts = []
    alpha = alpha_chart(rows)
    if alpha is not None:
        charts.append(f"<h2>Metric vs α</h2><img alt='metric vs alpha' src='{alpha}'><p class='note'>Training "
                      f"variants that differ from the shared config in model.alpha only; each point a seed, the "
                      f"line the mean ± one standard deviation over seeds.</p>")
    steps = steps_chart(rows)
    if steps is not None:
        charts.append(f"<h2>Metric vs sampler steps</h2><img alt='metric vs steps' src='{steps}'><p class='note'>"
                      f"Sampling variants (no retraining): one line per trained variant, integrator and guidance; "
                      f"Heun takes two network passes per step.</p>")
    seeds = ", ".join(str(s) for s in spec.get("seeds", []))
    single = [v for v, e in summary.items() if len(e["seeds"]) < 2]
    warning = (f"<p class='warning' style='color:#b00;font-weight:bold'>One seed only for {html.escape(', '.join(single))}: "
               f"no spread, so a difference between variants cannot be told from noise (give ≥ 2 seeds).</p>"
               if single else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ecgflowcmr sweep</title>
<style>{STYLE}</style></head><body>
<h1>Sweep {html.escape(str(spec.get('spec', '')))}</h1>
<p class="note">{len(summary)} variants × seeds {html.escape(seeds)} on the held-out split of
{html.escape(str(spec.get('data', '')))}; flow preset {html.escape(str(spec.get('preset', '')))}, shared overrides
{html.escape(' '.join(spec.get('shared_sets', [])) or 'none')}; PA-MAE {html.escape(str(spec.get('pamae', '')))}, VAE
{html.escape(str(spec.get('vae', '')))}. Each training seed trains its own flow; each row's cines use that seed's
noise. A difference between variants smaller than their spread over seeds is not told from noise.
{seconds:.0f} s for this invocation (finished runs and evaluations are reused).</p>
{warning}<h2>Mean ± standard deviation over seeds</h2>{summary_html(summary, rows)}
<h2>Every variant</h2><img alt='variants' src='{variants_chart(rows)}'>
{''.join(charts)}
<h2>Rows (variant × seed)</h2>{rows_html(rows)}
<h2>Columns</h2><table id='sweep-columns'>{''.join(f"<tr><td>{html.escape(c)}</td><td class='def'>{html.escape(d)}</td></tr>" for c, d in columns.items())}</table>
</body></html>"""
    write_text_atomic(out / "report.html", page)
    return out / "metrics.json"
