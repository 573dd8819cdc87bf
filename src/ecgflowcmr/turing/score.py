"""``turing score``: how well raters told real from generated, against chance (docs/turing.md, "Scoring").

Single mode (one video: real or generated?), "positive" = generated:
accuracy = correct / answered; sensitivity = generated called generated / generated shown;
specificity = real called real / real shown. Pair mode (two-alternative forced choice, which of two is
real?): accuracy = proportion correct (PC); d′ = √2 · Φ⁻¹(PC) (Macmillan & Creelman, 2AFC); the left
rate shows a side bias. Both: an exact two-sided binomial test of the correct count against 0.5 with its
Clopper–Pearson 95 % interval (``scipy.stats.binomtest``), per rater and pooled over all answers (the
pooled test treats answers as independent, as the paper's 0.514 of 250 does); accuracy per confidence
level; Fleiss' κ on the answers of the raters who rated every item.

Only this module reads the answer key (``study.connect(read_key=True)``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import binomtest, norm

from ecgflowcmr.atomic import write_text_atomic
from ecgflowcmr.turing.study import ANSWERS, KEY_TABLE, connect, settings

CONFIDENCE_LEVELS = (1, 2, 3, 4, 5, None)


@dataclass
class Rates:
    """Scores of one set of answers. Undefined values (no answers of that kind) are None."""

    who: str
    answered: int
    correct: int
    accuracy: float | None
    p_value: float | None
    """Exact two-sided binomial test of ``correct`` of ``answered`` against 0.5."""
    ci_low: float | None
    ci_high: float | None
    """Clopper–Pearson 95 % interval of the accuracy."""
    sensitivity: float | None = None
    specificity: float | None = None
    d_prime: float | None = None
    left_rate: float | None = None


@dataclass
class Score:
    mode: str
    n_items: int
    raters: list[Rates]
    overall: Rates
    kappa: float | None
    kappa_raters: int
    by_confidence: list[dict[str, object]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


def binomial_vs_chance(correct: int, n: int) -> tuple[float | None, float | None, float | None]:
    """(two-sided exact p against 0.5, Clopper–Pearson 95 % low, high); all None when ``n`` is 0."""
    if n == 0:
        return None, None, None
    test = binomtest(correct, n, 0.5, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=0.95, method="exact")
    return float(test.pvalue), float(ci.low), float(ci.high)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' κ of an (items, categories) table of how many raters chose each category per item.

    Every row must sum to the same number of raters m ≥ 2. κ = (P̄ − P̄ₑ) / (1 − P̄ₑ), with
    P̄ the mean per-item agreement Σⱼ nᵢⱼ(nᵢⱼ − 1) / (m(m − 1)) and P̄ₑ = Σⱼ pⱼ². None when P̄ₑ = 1
    (every rater gave the same answer everywhere: agreement beyond chance is undefined).
    """
    counts = np.asarray(counts, dtype=np.float64)
    m = counts.sum(axis=1)
    if counts.ndim != 2 or len(counts) == 0 or not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("counts must be a non-empty (items, categories) table with equal row sums ≥ 2")
    m = m[0]
    p_item = ((counts * (counts - 1)).sum(axis=1) / (m * (m - 1))).mean()
    p_cat = counts.sum(axis=0) / counts.sum()
    p_chance = float((p_cat**2).sum())
    if math.isclose(p_chance, 1.0):
        return None
    return float((p_item - p_chance) / (1.0 - p_chance))


def rates(who: str, answers: list[str], truths: list[str], mode: str) -> Rates:
    """Scores of paired answer/truth lists (module docstring: the definitions)."""
    n = len(answers)
    correct = sum(a == t for a, t in zip(answers, truths))
    p, lo, hi = binomial_vs_chance(correct, n)
    result = Rates(who, n, correct, correct / n if n else None, p, lo, hi)
    if mode == "single":
        gen = [a for a, t in zip(answers, truths) if t == "generated"]
        real = [a for a, t in zip(answers, truths) if t == "real"]
        result.sensitivity = sum(a == "generated" for a in gen) / len(gen) if gen else None
        result.specificity = sum(a == "real" for a in real) / len(real) if real else None
    elif n:
        pc = correct / n
        result.d_prime = float(math.sqrt(2.0) * norm.ppf(pc)) if 0.0 < pc < 1.0 else None
        result.left_rate = sum(a == "a" for a in answers) / n
    return result


def score_study(study: str | Path) -> Score:
    """Read the answers and the key of a study and compute every score."""
    conn = connect(study, read_key=True)
    try:
        mode = settings(conn)["mode"]
        truth = dict(conn.execute(f"SELECT item_id, truth FROM {KEY_TABLE}").fetchall())
        raters = conn.execute("SELECT rater_id, name FROM raters ORDER BY created_at").fetchall()
        answers = conn.execute("SELECT rater_id, item_id, answer, confidence FROM answers").fetchall()
    finally:
        conn.close()
    per_rater: dict[str, list] = {r["rater_id"]: [] for r in raters}
    for a in answers:
        per_rater[a["rater_id"]].append(a)
    names = {r["rater_id"]: r["name"] for r in raters}

    def score_of(who: str, rows: list) -> Rates:
        return rates(who, [r["answer"] for r in rows], [truth[r["item_id"]] for r in rows], mode)

    rater_rates = [score_of(names[rid], rows) for rid, rows in per_rater.items() if rows]
    overall = score_of("all raters", list(answers))
    by_conf = []
    for level in CONFIDENCE_LEVELS:
        rows = [a for a in answers if a["confidence"] == level]
        r = score_of(str(level), rows)
        by_conf.append({"confidence": "none" if level is None else level, "answered": r.answered,
                        "correct": r.correct, "accuracy": r.accuracy})
    finished = [rid for rid, rows in per_rater.items() if len(rows) == len(truth)]
    kappa = None
    if len(finished) >= 2:
        items = sorted(truth)
        column = {c: j for j, c in enumerate(ANSWERS[mode])}
        counts = np.zeros((len(items), len(column)), dtype=np.int64)
        row_of = {item: i for i, item in enumerate(items)}
        for rid in finished:
            for a in per_rater[rid]:
                counts[row_of[a["item_id"]], column[a["answer"]]] += 1
        kappa = fleiss_kappa(counts)
    unfinished = [names[rid] for rid, rows in per_rater.items() if len(rows) < len(truth)]
    return Score(mode, len(truth), rater_rates, overall, kappa, len(finished), by_conf, unfinished)


# ------------------------------------------------------------------------------------------ outputs

def _fmt(x: object, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if x < 1e-3 else f"{x:.{digits}f}"
    return str(x)


def _columns(mode: str) -> list[str]:
    extra = ["sensitivity", "specificity"] if mode == "single" else ["d_prime", "left_rate"]
    return ["who", "answered", "correct", "accuracy", "ci_low", "ci_high", "p_value", *extra]


def markdown_section(score: Score, heading: str = "##") -> str:
    """The scores as Markdown, under one heading (``heading`` sets its level)."""
    design = ("single videos, real or generated? (positive = generated)" if score.mode == "single"
              else "pairs, which of the two is real? (two-alternative forced choice)")
    cols = _columns(score.mode)
    lines = [f"{heading} Turing test", "",
             f"Design: {design}; {score.n_items} items; {len(score.raters)} rater(s).", ""]
    o = score.overall
    if o.answered:
        lines.append(f"Pooled accuracy {_fmt(o.accuracy)} ({o.correct} of {o.answered}; 95 % CI "
                     f"{_fmt(o.ci_low)}–{_fmt(o.ci_high)}; exact binomial test against 0.5: p = {_fmt(o.p_value)}).")
    else:
        lines.append("No answers yet.")
    kappa = (f"Fleiss' κ between the {score.kappa_raters} raters who rated every item: {_fmt(score.kappa)}."
             if score.kappa_raters >= 2 else "Fleiss' κ needs two raters who rated every item.")
    lines += ["", kappa]
    if score.unfinished:
        lines += ["", f"Not finished (scored on the answers given): {', '.join(score.unfinished)}."]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in [*score.raters, score.overall]:
        d = asdict(r)
        lines.append("| " + " | ".join(_fmt(d[c]) for c in cols) + " |")
    lines += ["", "Accuracy by confidence (1 guess … 5 certain):", "",
              "| confidence | answered | correct | accuracy |", "|---|---|---|---|"]
    lines += [f"| {c['confidence']} | {c['answered']} | {c['correct']} | {_fmt(c['accuracy'])} |"
              for c in score.by_confidence]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def write_score(score: Score, out: str | Path) -> list[Path]:
    """Write ``score.md``, ``score.json`` (every field of :class:`Score`), ``raters.csv`` (per rater and
    pooled) and ``confidence.csv`` into ``out``. A report below this layer can read these files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = _columns(score.mode)
    rater_rows = [[asdict(r)[c] for c in cols] for r in [*score.raters, score.overall]]
    conf_rows = [[c["confidence"], c["answered"], c["correct"], c["accuracy"]] for c in score.by_confidence]
    files = {
        "score.md": "# Turing study score\n\n" + markdown_section(score, "##"),
        "score.json": json.dumps(asdict(score), indent=2) + "\n",
        "raters.csv": _csv(cols, rater_rows),
        "confidence.csv": _csv(["confidence", "answered", "correct", "accuracy"], conf_rows),
    }
    for name, text in files.items():
        write_text_atomic(out / name, text)
    return [out / name for name in files]


def report_section(study: str | Path, heading: str = "##") -> str | None:
    """The Markdown section for the evaluation report, or None when the study has no answers yet."""
    score = score_study(study)
    return markdown_section(score, heading) if score.overall.answered else None
