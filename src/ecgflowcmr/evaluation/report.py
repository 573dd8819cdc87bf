"""The evaluation report: one self-contained ``report.html`` (every image and video inline, no network) and
``metrics.csv`` from the evaluation's metrics.json tree and the instrument's arrays.

Sections: Table 1 in the paper's layout (methods × LPIPS, FID, FVD, time per video) with our baselines,
in-domain distances and the real-vs-real floor; does the ECG steer the heart (agreement per measure beside
floors and the ECG ceiling; diagnosis; end-systolic timing); real vs generated cines with the ECG beneath;
LV area–time curves; scatter plots of generated vs real measures.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.atomic import atomic_file, write_text_atomic

SOURCE_LABELS = {
    "generated": "ECG → cine (this model)",
    "retrieval": "retrieval (nearest ECG, real train cine)",
    "vae_reconstruction": "VAE reconstruction (latent upper bound)",
    "template_only": "template only (no ECG)",
    "shuffled_ecg": "shuffled ECG",
    "real_floor": "real vs real (train cines)",
    "ecg_ceiling": "ECG ceiling (ridge on PA-MAE features)",
    "constant": "constant (train mean)",
}
TABLE1_COLUMNS = (("lpips", "LPIPS ↓", "{:.3f}"), ("fid_inception", "FID ↓", "{:.1f}"),
                  ("fvd_i3d", "FVD ↓", "{:.1f}"), ("fid_cmr", "FID-CMR ↓", "{:.3f}"),
                  ("fvd_cmr", "FVD-CMR ↓", "{:.3f}"), ("psnr_db", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"),
                  ("temporal_change_ratio", "motion ratio", "{:.2f}"))
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:3px 9px;border-bottom:1px solid #ddd;font-size:.85em}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.ours td{font-weight:bold}tr.floor td{color:#777}td.na{color:#aaa;text-align:center}
figure{display:inline-block;margin:.4em;vertical-align:top;max-width:100%}figcaption{font-size:.8em;color:#555;max-width:640px}
img,video{max-width:100%}div.wide{overflow-x:auto;max-width:100%}p.note{font-size:.85em;color:#555;max-width:900px}td.def{font-size:.75em;color:#666}"""


# --------------------------------------------------------------------------------------------------
# metrics.json → rows
# --------------------------------------------------------------------------------------------------


def flatten_metrics(tree: dict[str, Any], section: str = "", inherited: str = "") -> list[tuple[str, str, Any, str]]:
    """(section, name, value, definition) for every number in a metrics tree: a ``{"value", "definition"}``
    dict is one metric, ``{"unavailable": reason}`` a metric without a value; other dicts are sections
    (their own ``definition`` string lends itself to their plain numbers and those of their sub-sections)."""
    rows: list[tuple[str, str, Any, str]] = []
    own = tree.get("definition")
    shared = own if isinstance(own, str) and own else inherited
    for key, value in tree.items():
        where = f"{section} › {key}" if section else key
        if isinstance(value, dict) and "value" in value:
            shown = value["value"]
            if isinstance(shown, dict):  # e.g. Dice per class
                rows += [(where, k, v, str(value.get("definition", ""))) for k, v in shown.items()]
            else:
                rows.append((section, key, shown, str(value.get("definition", ""))))
        elif isinstance(value, dict) and "unavailable" in value:
            rows.append((section, key, None, f"unavailable: {value['unavailable']}"))
        elif isinstance(value, dict):
            rows += flatten_metrics(value, where, shared)
        elif (isinstance(value, int | float) and not isinstance(value, bool)) or value is None:
            rows.append((section, key, value, shared))
    return rows


def write_metrics_csv(path: Path, metrics: dict[str, Any]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["section", "metric", "value", "definition"])
        writer.writerows(flatten_metrics(metrics))


# --------------------------------------------------------------------------------------------------
# Pictures (inline)
# --------------------------------------------------------------------------------------------------


def png_uri(fig) -> str:
    """A Matplotlib figure as an inline PNG ``data:`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def area_curves_png(curves: dict[str, np.ndarray], subjects: list[str], k: int) -> str:
    """LV blood-pool area over the cycle, real vs generated (and shuffled ECG), for the first k subjects."""
    plt = pyplot()
    k = min(k, len(subjects))
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for name, style in (("real", "k-"), ("generated", "C0-"), ("shuffled_ecg", "C3--"), ("template_only", "C7:")):
            if name in curves and i < len(curves[name]):  # a baseline may cover the first subjects only
                ax.plot(curves[name][i] / 100, style, lw=1.2, label=SOURCE_LABELS.get(name, name))
        ax.set_title(subjects[i], fontsize=9)
        ax.set_xlabel("frame (0 = R-peak)", fontsize=8)
        if i == 0:
            ax.set_ylabel("LV pool area (cm²)", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return png_uri(fig)


def scatter_png(measures: dict[str, dict[str, np.ndarray]], names: list[str]) -> str:
    """Generated (and ECG ceiling) vs real, one panel per measure, identity line."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(2.9 * len(names), 2.8), squeeze=False)
    for ax, m in zip(axes[0], names):
        real = measures["real"][m]
        for name, marker in (("generated", "o"), ("ecg_ceiling", "x"), ("retrieval", "^")):
            if name in measures:
                ax.scatter(real, measures[name][m], s=12, marker=marker, alpha=0.7, label=SOURCE_LABELS[name])
        lo = float(min(real.min(), measures["generated"][m].min()))
        hi = float(max(real.max(), measures["generated"][m].max()))
        ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("real", fontsize=8)
    axes[0][0].set_ylabel("predicted / generated", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return png_uri(fig)


def cine_grid(cines: dict[str, np.ndarray], index: int, ecg: np.ndarray, order: list[str],
              suffix: str = ".mp4") -> str:
    """One subject: its cines side by side (real first), the ECG beneath with a moving cursor, as an inline
    H.264 MP4 (``suffix`` ".mp4"; a 6-panel GIF would be ~20 MB) or a PNG still of frame 0 (".png")."""
    from ecgflowcmr.viz.render import render_cine_video

    names = [n for n in order if n in cines and index < len(cines[n])]  # baselines: maybe the first only
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"grid{suffix}"
        render_cine_video([cines[n][index] for n in names], path, ecg_signal=np.asarray(ecg, dtype=np.float32),
                          titles=[n.replace("_", " ") for n in names], fps=12.5)
        mime = "video/mp4" if suffix == ".mp4" else "image/png"
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _cell(entry: Any, fmt: str) -> str:
    if isinstance(entry, dict) and "unavailable" in entry:
        return f"<td class='na' title='{html.escape(str(entry['unavailable']))}'>n/a*</td>"
    value = entry.get("value") if isinstance(entry, dict) else entry
    if value is None:
        return "<td class='na'>–</td>"
    if isinstance(value, float) and not np.isfinite(value):
        return f"<td class='num'>{'∞' if value > 0 else '−∞'}</td>"
    return f"<td class='num'>{fmt.format(value)}</td>"


def table1_html(quality: dict[str, Any], realism: dict[str, Any], seconds_per_video: float | None) -> str:
    """Methods × metrics (the paper's Table 1 layout), floors greyed, our model in bold."""
    head = "".join(f"<th>{label}</th>" for _, label, _ in TABLE1_COLUMNS) + "<th>time / video (s)</th>"
    rows = []
    for source in ("generated", "retrieval", "vae_reconstruction", "template_only", "shuffled_ecg", "real_floor"):
        if source not in quality:
            continue
        m = dict(quality[source])
        cmr = "real_floor" if source == "real_floor" else source
        m["fid_cmr"] = realism.get(f"fid_cmr_{cmr}", {"unavailable": "not measured for this source"})
        m["fvd_cmr"] = realism.get(f"fvd_cmr_{cmr}", {"unavailable": "not measured for this source"})
        cells = "".join(_cell(m.get(key, {"unavailable": "not measured"}), fmt) for key, _, fmt in TABLE1_COLUMNS)
        time_cell = _cell(seconds_per_video, "{:.2f}") if source == "generated" else "<td></td>"
        cls = "ours" if source == "generated" else "floor" if source in ("real_floor", "shuffled_ecg", "template_only") else ""
        rows.append(f"<tr class='{cls}'><td>{html.escape(SOURCE_LABELS[source])}</td>{cells}{time_cell}</tr>")
    reasons = sorted({str(quality[s][k]["unavailable"]) for s in quality if isinstance(quality[s], dict)
                      for k in ("lpips", "fid_inception", "fvd_i3d")
                      if isinstance(quality[s].get(k), dict) and "unavailable" in quality[s][k]})
    notes = "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
    return (f"<table id='table1'><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
            + (f"<p class='note'>* unavailable here:</p><ul class='note'>{notes}</ul>" if notes else ""))


def agreement_html(agreement: dict[str, Any]) -> str:
    """Per measure: Spearman ρ / R² / MAE of each source against the subject's own real measure."""
    sources = ["generated", "ecg_ceiling", "retrieval", "vae_reconstruction", "shuffled_ecg", "template_only",
               "constant"]
    head = "".join(f"<th colspan=3>{html.escape(SOURCE_LABELS[s])}</th>" for s in sources)
    sub = "".join("<th>ρ</th><th>R²</th><th>MAE</th>" for _ in sources)
    rows = []
    for measure, per_source in agreement.items():
        cells = "".join(_cell(per_source[s]["spearman"], "{:.2f}") + _cell(per_source[s]["r2"], "{:.2f}")
                        + _cell(per_source[s]["mae"], "{:.3g}") for s in sources)
        rows.append(f"<tr><td title='{html.escape(per_source['definition'])}'>{html.escape(measure)}</td>{cells}</tr>")
    return (f"<div class='wide'><table id='agreement'><tr><th rowspan=2>measure</th>{head}</tr><tr>{sub}</tr>"
            f"{''.join(rows)}</table></div>")


def noise_seeds_html(section: dict[str, Any] | None) -> str:
    """The ``over_noise_seeds`` section as a table (mean, sd, range, each seed's value); empty without one."""
    if not section:
        return ""
    seeds = section["seeds"]
    head = "".join(f"<th>seed {int(s)}</th>" for s in seeds)
    rows = "".join(f"<tr><td>{html.escape(name)}</td>{_cell(row['mean'], '{:.3f}')}{_cell(row['sd'], '{:.3f}')}"
                   f"{_cell(row['min'], '{:.3f}')}{_cell(row['max'], '{:.3f}')}"
                   f"{''.join(_cell(v, '{:.3f}') for v in row['values'])}</tr>"
                   for name, row in section["measures"].items())
    return (f"<h2>Over {len(seeds)} noise seeds</h2><p class='note'>{html.escape(section['definition'])}</p>"
            f"<div class='wide'><table id='noise-seeds'><tr><th>number</th><th>mean</th><th>sd</th><th>min</th>"
            f"<th>max</th>{head}</tr>{rows}</table></div>")


def value_table(section: dict[str, Any], table_id: str) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td>{_cell(v, '{:.3f}')}<td class='def'>"
                   f"{html.escape(str(v.get('definition', '')))}</td></tr>"
                   for k, v in section.items() if isinstance(v, dict) and "value" in v)
    return f"<table id='{table_id}'>{rows}</table>"


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------


def segmenter_warning(instrument: dict[str, Any]) -> str:
    warning = instrument.get("segmenter", {}).get("warning")
    return f"<p class='warning' style='color:#b00;font-weight:bold'>{html.escape(warning)}</p>" if warning else ""


def write_report(out: str | Path, metrics: dict[str, Any], result: Any, ecgs: np.ndarray, subjects: list[str],
                 n_examples: int = 4, turing_markdown: str | None = None,
                 downstream: tuple[str, list[tuple[str, bytes]]] | None = None) -> Path:
    """``out/report.html`` and ``out/metrics.csv`` from the evaluation's metrics tree and an
    ``InstrumentResult`` (its test cines, curves and measures); ``ecgs`` (N, 12, 5000) of the test subjects;
    ``turing_markdown``: a scored Turing study's section (``turing.report_section``), shown as written;
    ``downstream``: a downstream experiment's tables (Markdown) and plots (name, PNG bytes), as
    ``downstream.report.report_section`` reads them from its output folder."""
    out = Path(out)
    write_metrics_csv(out / "metrics.csv", metrics)
    instrument = metrics["instrument"]
    quality = metrics.get("quality", {})
    order = ["real", "generated", "vae_reconstruction", "retrieval", "shuffled_ecg"]
    cines = dict(result.cines)
    k = min(n_examples, len(subjects))
    grids = "".join(f"<figure><video controls loop muted autoplay playsinline src='{cine_grid(cines, i, ecgs[i], order)}'>"
                    f"</video><figcaption>{html.escape(subjects[i])}: real, generated from its ECG, VAE "
                    f"reconstruction, retrieved, generated from a shuffled ECG; the ECG beneath with a cursor at each "
                    f"frame's time</figcaption></figure>" for i in range(k))
    still = cine_grid(cines, 0, ecgs[0], order, suffix=".png")
    measures = list(result.measures["real"])
    seconds = metrics.get("speed", {}).get("seconds_per_video", {}).get("value")
    diag = instrument["diagnosis"]
    diag_html = (value_table(diag, "diagnosis") if "unavailable" not in diag
                 else f"<p>{html.escape(diag['unavailable'])}</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ecgflowcmr evaluation</title>
<style>{STYLE}</style></head><body>
<h1>Evaluation of {html.escape(str(metrics.get('model', 'the model')))}</h1>
<p class="note">{int(instrument['subjects']['test'])} held-out subjects ({html.escape(str(instrument['subjects']['split']))}
split of {html.escape(str(metrics.get('data', '')))}); {int(instrument['subjects']['train'])} training subjects behind
the classifiers, the ceiling and the retrieval pool. Every generated cine uses its own noise. Definitions of
every number are in metrics.json and metrics.csv.</p>
{noise_seeds_html(metrics.get('over_noise_seeds'))}
<h2>Table 1: generation quality</h2>
{table1_html(quality, instrument['realism'], seconds)}
<p class="note">FID-CMR / FVD-CMR are in-domain distances from the evaluation segmenter's features (not the
Inception/I3D ones). Real vs real: real training cines in place of generated ones, through the same code.</p>
<h2>Does the ECG steer the heart?</h2>
<p class="note">Chamber measures read by a segmenter trained on this cohort's real cines. Four-chamber areas
are proxies for the paper's short-axis volumes. Each column compares a source's measure with the same measure
on the subject's own real cine (Spearman ρ, R² without refit, MAE). The ECG ceiling is the most any generator
driven by these ECG features can reach; the shuffled ECG, template and constant are floors.</p>
{segmenter_warning(instrument)}{agreement_html(instrument['agreement'])}
<h3>Diagnosis</h3>{diag_html}
<h3>End-systolic timing (LV area curve)</h3>{value_table(instrument['timing'], 'timing')}
<h3>Realism</h3>{value_table(instrument['realism'], 'realism')}
<h2>Real and generated cines</h2>
<figure><img alt="end-diastolic frames of {html.escape(subjects[0])}" src="{still}"><figcaption>Frame 0 (end-diastole)
of {html.escape(subjects[0])}, for viewers without video.</figcaption></figure>
{grids}
{_area_curves_html(result.curves, subjects, k)}
<h2>Generated vs real measures</h2><img alt="scatter" src="{scatter_png(result.measures, measures)}">
<h2>Ablations</h2><p class="note">Ablations and sampler sweeps have their own report: <code>ecgflowcmr evaluate
--sweep SPEC</code> (docs/evaluation.md).</p>
{_turing_html(turing_markdown)}{_downstream_html(downstream)}</body></html>"""
    report = out / "report.html"
    write_text_atomic(report, page)
    return report


def _area_curves_html(curves: dict[str, np.ndarray], subjects: list[str], k: int) -> str:
    """The LV area curves of the first k subjects; empty for k = 0 (no examples asked for)."""
    if k < 1:
        return ""
    return f"<h2>LV area over the cycle</h2><img alt=\"area curves\" src=\"{area_curves_png(curves, subjects, k)}\">"


def _turing_html(markdown: str | None) -> str:
    """The Turing study's Markdown (tables included) as preformatted text; empty without a study."""
    if markdown is None:
        return ""
    return f"<h2>Turing test (raters)</h2><pre class='turing'>{html.escape(markdown)}</pre>\n"


def _downstream_html(section: tuple[str, list[tuple[str, bytes]]] | None) -> str:
    """The downstream experiment's tables (Markdown, preformatted) and its metric-against-mix plots inline;
    empty without one."""
    if section is None:
        return ""
    markdown, plots = section
    figures = "".join(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
                      f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(name)}</figcaption></figure>"
                      for name, png in plots)
    return (f"<h2>Downstream: does pretraining on generated cines help?</h2>"
            f"<pre class='downstream' style='white-space:pre-wrap'>{html.escape(markdown)}</pre>\n{figures}\n")
