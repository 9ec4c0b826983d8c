"""Paired differences between variants of one benchmark run (same cases, same seeds).

Every variant of a run samples the same cases with the same seeds, so a variant's share minus plain's is
measured on matched samples: the seed decides much of a sample (its colour, its layout), and the paired
interval is far tighter than two independent Wilson intervals side by side. The interval is a percentile
bootstrap over cases (a case's seeds are resampled together: they share a reference and a prompt).
"""
from __future__ import annotations

import numpy as np


def per_case_means(per_case: list[dict], variant: str, metric: str) -> np.ndarray | None:
    """[cases] share of ``metric`` per case over its samples, or None when the run lacks ``variant``."""
    if not per_case or any(variant not in row["variants"] for row in per_case):
        return None
    return np.array([np.mean([bool(s[metric]) for s in row["variants"][variant]]) for row in per_case], float)


def paired_difference(per_case: list[dict], variant: str, base: str = "plain", metric: str = "clicked",
                      resamples: int = 4000, seed: int = 0) -> dict | None:
    """``{"diff": d, "ci95": [lo, hi]}``: ``variant``'s share of ``metric`` minus ``base``'s on the same samples,
    with a 95 % bootstrap interval over cases; None when either variant is missing from the run."""
    a, b = per_case_means(per_case, variant, metric), per_case_means(per_case, base, metric)
    if a is None or b is None:
        return None
    d = a - b
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)]}


def paired_table(res: dict, base: str = "plain", metrics: tuple[str, ...] = ("clicked", "leak")) -> str:
    """Markdown: every other variant's paired difference to ``base`` per metric (empty when ``base`` is absent);
    differences to plain already in ``res["paired"]`` (a bench run's) are used as they are."""
    per_case = res.get("per_case") or []
    names = [n for n in res["variants"] if n != base]
    if per_case_means(per_case, base, metrics[0]) is None or not names:
        return ""
    lines = [f"| variant | " + " | ".join(f"{m} - {base} (paired)" for m in metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    done = res.get("paired", {}) if base == "plain" else {}  # the bench's own run computed these already
    for name in names:
        cells = []
        for m in metrics:
            p = done[name][m] if m in done.get(name, {}) else paired_difference(per_case, name, base, m)
            cells.append("na" if p is None else f"{p['diff']:+.2f} [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

