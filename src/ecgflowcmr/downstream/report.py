"""The experiment's outputs: ``results.csv`` (one row per fold and metric), ``results.json`` (summaries,
paired differences, cohort, config), ``tables.md`` (the paper's Tables 2–4 with the controls beside) and
``plots/<task>_<metric>.png`` (metric against mix ratio, every fold drawn); :func:`report_section` gives
them to ``evaluate --downstream DIR``."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ecgflowcmr.atomic import atomic_file, write_text_atomic
from ecgflowcmr.downstream.config import PAPER_PHENOTYPES
from ecgflowcmr.downstream.metrics import mean_sd, paired_difference
from ecgflowcmr.errors import InputError

COLUMNS = ("task", "method", "source", "mix", "fold", "metric", "value", "n_train", "n_test")
LOWER_IS_BETTER = ("mae:",)


def _values(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[int, float]]:
    """(task, method, metric) → {fold: value}."""
    out: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        out.setdefault((r["task"], r["method"], r["metric"]), {})[int(r["fold"])] = float(r["value"])
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over folds per (task, method, metric), and paired differences over the same folds:
    every method against ``real`` (MAE on real only), and every control against ``ecg`` at the same mix."""
    values = _values(rows)
    summary = []
    for (task, method, metric), by_fold in sorted(values.items()):
        mean, sd = mean_sd(list(by_fold.values()))
        summary.append({"task": task, "method": method, "metric": metric, "mean": mean, "sd": sd,
                        "folds": len(by_fold)})
    diffs = []
    for (task, method, metric), by_fold in sorted(values.items()):
        refs = ["real"] if method != "real" else []
        source, _, mix = method.partition("@")
        if mix and source != "ecg":
            refs.append(f"ecg@{mix}")
        for ref in refs:
            other = values.get((task, ref, metric))
            if not other:
                continue
            folds = sorted(set(by_fold) & set(other))
            d = paired_difference([by_fold[f] for f in folds], [other[f] for f in folds])
            diffs.append({"task": task, "method": method, "against": ref, "metric": metric, **d})
    return {"summary": summary, "paired_differences": diffs}


def write_outputs(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "results.csv", buffer.getvalue())
    result = {**meta, **summarise(rows)}
    write_text_atomic(out / "results.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text_atomic(out / "tables.md", tables_markdown(result))
    return [out / "results.csv", out / "results.json", out / "tables.md", *plot_mixes(rows, out / "plots")]


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _method_order(methods: set[str]) -> list[str]:
    def key(m: str) -> tuple:
        source, _, mix = m.partition("@")
        base = {"scratch": 0, "real": 1}.get(m, 2)
        return (base, float(mix or 0), source != "ecg", source)

    return sorted(methods, key=key)


def _label(method: str) -> str:
    if method == "scratch":
        return "ViT (scratch)"
    if method == "real":
        return "MAE (real)"
    source, _, mix = method.partition("@")
    return f"MAE + {source} {float(mix) * 100:.0f} %"


def _cell(stats: dict[tuple[str, str, str], dict], task: str, method: str, metric: str, digits: int = 3) -> str:
    s = stats.get((task, method, metric))
    if s is None or math.isnan(s["mean"]):
        return "–"
    sd = "" if math.isnan(s["sd"]) else f" ± {s['sd']:.{digits}f}"
    return f"{s['mean']:.{digits}f}{sd}"


def _diff(diffs: dict[tuple[str, str, str, str], dict], task: str, method: str, metric: str, against: str) -> str:
    d = diffs.get((task, method, metric, against))
    if d is None or math.isnan(d["low"]):
        return "–"
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def tables_markdown(result: dict[str, Any]) -> str:
    stats = {(s["task"], s["method"], s["metric"]): s for s in result["summary"]}
    diffs = {(d["task"], d["method"], d["metric"], d["against"]): d for d in result["paired_differences"]}
    tasks = {s["task"] for s in result["summary"]}
    methods = _method_order({s["method"] for s in result["summary"]})
    lines = ["# Downstream results", ""]
    cohort = result.get("cohort", {})
    lines += [f"Real cohort: {cohort.get('subjects', '?')} subjects, {result.get('folds', '?')}-fold subject-level "
              f"CV (seed {result.get('seed', '?')}); synthetic pool: {cohort.get('synthetic_subjects', 0)} "
              "ECG-only subjects (none in the real cohort). "
              + (f"Real pretraining cines: {cohort['pretrain_only_subjects']} subjects of a reserved split, "
                 "never cross-validated. " if cohort.get("pretrain_only_subjects") else
                 "Real pretraining cines: the training folds of each fold. ")
              + "Task sizes (cases/classes): "
              + ", ".join(f"{k} {v}" for k, v in cohort.get("tasks", {}).items()) + ".",
              "Mean ± sd over folds; Δ = paired difference over the same folds with its 95 % t interval: "
              "against MAE (real), and for every other source against the ECG-conditioned source at the "
              "same mix.", ""]

    def classification(title: str, names: list[str]) -> None:
        present = [t for t in names if t in tasks]
        if not present:
            return
        lines.append(f"## {title}")
        lines.append("")
        header = ["Method"] + [f"{t} {m}" for t in present for m in ("ACC", "AUC")] + [f"Δ AUC vs real ({t})" for t in present]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for method in methods:
            cells = [_cell(stats, t, method, m) for t in present for m in ("accuracy", "auc")]
            cells += [_diff(diffs, t, method, "auc", "real") for t in present]
            lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
        controls = [m for m in methods if "@" in m and not m.startswith("ecg@")]
        if controls:
            lines.append("")
            lines.append("Other sources against the ECG-conditioned source at the same mix (Δ AUC, Δ ACC): ECG-blind "
                         "controls, ablated generators, and supplied cines (`cines:NAME`; the phantom's true cines "
                         "of the same subjects are the ceiling a perfect generator would reach):")
            lines.append("")
            lines.append("| Control | " + " | ".join(f"{t} Δ AUC | {t} Δ ACC" for t in present) + " |")
            lines.append("|" + "---|" * (1 + 2 * len(present)))
            for method in controls:
                mix = method.partition("@")[2]
                cells = [_diff(diffs, t, method, m, f"ecg@{mix}") for t in present for m in ("auc", "accuracy")]
                lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
        lines.append("")

    classification("Table 2: disease classification (CAD, CM, HF vs control, 1:1)", ["cad", "cm", "hf"])
    if "phenotypes" in tasks:
        columns = sorted({s["metric"][3:] for s in result["summary"] if s["metric"].startswith("r2:")},
                         key=lambda c: (PAPER_PHENOTYPES.index(c) if c in PAPER_PHENOTYPES else 99, c))
        first = [c for c in columns if c in PAPER_PHENOTYPES] or columns[:4]
        lines += ["## Table 3: phenotype prediction (MAE in physical units, R²)", ""]
        header = ["Method"] + [f"{c} {m}" for c in first for m in ("MAE", "R²")] + ["mean R²", "Δ mean R² vs real"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for method in methods:
            cells = [_cell(stats, "phenotypes", method, f"{m}:{c}", 2 if m == "mae" else 3)
                     for c in first for m in ("mae", "r2")]
            cells += [_cell(stats, "phenotypes", method, "mean_r2"), _diff(diffs, "phenotypes", method, "mean_r2", "real")]
            lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
        lines += ["", f"mean R² over {len(columns)} phenotypes: {', '.join(columns)}.", ""]
    classification("Table 4: cardiomyopathy vs control and HCM/DCM/RCM/normal", ["cm", "four_class"])
    lines += verdicts(result)
    lines += sensitivity(result)
    for source, reason in result.get("unavailable", {}).items():
        lines.append(f"- control {source} unavailable: {reason}")
    return "\n".join(lines) + "\n"


def verdicts(result: dict[str, Any]) -> list[str]:
    """Plain sentences for the headline metric of each task (AUC, mean R²): does synthetic pretraining
    beat real-only pretraining, and does the ECG-conditioned source beat each ECG-blind one, at each mix?
    A difference counts only when its 95 % interval over folds excludes zero."""
    out = ["## What the numbers say", ""]
    for d in result["paired_differences"]:
        headline = "mean_r2" if d["task"] == "phenotypes" else "auc"
        if d["metric"] != headline or math.isnan(d["low"]):
            continue
        if d["against"] == "real" and not d["method"].startswith(("ecg@", "cines:")):
            continue
        if d["low"] > 0:
            word = "better than"
        elif d["high"] < 0:
            word = "worse than"
        else:
            word = "not distinguishable from"
        out.append(f"- {d['task']} ({headline}): {_label(d['method'])} is {word} {_label(d['against'])} "
                   f"(Δ {d['diff']:+.3f}, 95 % CI [{d['low']:+.3f}, {d['high']:+.3f}], {d['folds']} folds).")
    return [*out, ""] if len(out) > 2 else []


def sensitivity(result: dict[str, Any]) -> list[str]:
    """Per task's headline metric: the spread of the paired differences over folds and what it lets these
    folds see: the 95 % interval's half-width (the smallest difference that can be declared at all) and
    the difference declared with 80 % power (``paired_difference``'s ``detectable``); medians over every
    comparison in the tables, with their range."""
    rows = []
    for task in sorted({d["task"] for d in result["paired_differences"]}):
        headline = "mean_r2" if task == "phenotypes" else "auc"
        ds = [d for d in result["paired_differences"] if d["task"] == task and d["metric"] == headline
              and not math.isnan(d.get("sd", math.nan))]
        if not ds:
            continue
        sds = sorted(d["sd"] for d in ds)
        halves = sorted((d["high"] - d["low"]) / 2 for d in ds)
        found = sorted(d["detectable"] for d in ds)
        med = len(ds) // 2
        rows.append(f"| {task} ({headline}) | {len(ds)} | {sds[med]:.3f} ({sds[0]:.3f}–{sds[-1]:.3f}) | "
                    f"±{halves[med]:.3f} | {found[med]:.3f} ({found[0]:.3f}–{found[-1]:.3f}) |")
    if not rows:
        return []
    return ["## How small a difference these folds can see", "",
            "From the spread over folds of the paired differences above (median over the comparisons, range "
            "in brackets): a 95 % interval's half-width is the smallest difference that can be declared at "
            "all; the last column is the true difference declared with 80 % power, (t₀.₉₇₅ + t₀.₈₀) · sd / "
            "√folds. A smaller effect than that is likely to read \"not distinguishable\".", "",
            "| task (metric) | comparisons | sd of Δ over folds | 95 % half-width | detectable (80 % power) |",
            "|---|---|---|---|---|", *rows, ""]


def report_section(folder: str | Path) -> tuple[str, list[tuple[str, bytes]]]:
    """A finished ``downstream`` output folder as a section of the evaluation report: its ``tables.md``
    and its plots (name, PNG bytes). Raises InputError when the folder has no ``tables.md``."""
    folder = Path(folder)
    tables = folder / "tables.md"
    if not tables.is_file():
        raise InputError(folder, "no tables.md here: not a finished `ecgflowcmr downstream` output folder")
    plots = sorted((folder / "plots").glob("*.png"))
    return tables.read_text(), [(p.stem, p.read_bytes()) for p in plots]


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def plot_mixes(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One PNG per (task, headline metric): each source's mean over folds against mix, folds as dots;
    scratch and real-only as horizontal references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = {"accuracy", "auc", "mean_r2", *(f"r2:{c}" for c in PAPER_PHENOTYPES)}
    values = _values(rows)
    written = []
    for task, metric in sorted({(t, m) for t, _, m in values if m in headline}):
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for ref, style in (("scratch", ":"), ("real", "--")):
            v = values.get((task, ref, metric))
            if v:
                ax.axhline(sum(v.values()) / len(v), color="grey", linestyle=style, label=_label(ref))
        sources = sorted({m.partition("@")[0] for t, m, k in values if t == task and k == metric and "@" in m},
                         key=lambda s: (s != "ecg", s))
        for source in sources:
            base = values.get((task, "real", metric), {})
            points = sorted([(0.0, base)] if base else [], key=lambda p: p[0])
            points += sorted((float(m.partition("@")[2]), v) for (t, m, k), v in values.items()
                             if t == task and k == metric and m.partition("@")[0] == source)
            xs = [x for x, _ in points]
            line = ax.plot(xs, [sum(v.values()) / len(v) for _, v in points], marker="o", label=source)[0]
            for x, v in points:
                ax.scatter([x] * len(v), list(v.values()), s=8, alpha=0.4, color=line.get_color())
        ax.set_xlabel("synthetic cines per real cine (mix)")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: {metric} (dots: folds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{task}_{metric.replace(':', '_')}.png"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(path)
    return written
