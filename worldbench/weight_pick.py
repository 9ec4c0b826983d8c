"""Picking an adapter's P3S weight on the validation split (``python -m worldbench pick``).

The rule the README's adapter rows follow: among val runs of one variant at several weights, the highest
``pick_score`` (clicked - leak + prompt), ties to the lower weight (the smaller change to plain sampling).
A weight whose outputs lose the subject's class (its ``class`` share more than ``bench.CLASS_MARGIN`` below plain's in
the same run) is not eligible: a broken image can still hold a blob of the clicked colour, which ``clicked``
counts (session 13: a strong subject loss smeared the colour over the canvas).
"""
from __future__ import annotations

from .bench import keeps_class, pick_score


def weight_rows(runs: list[dict], variant: str = "adapter") -> list[dict]:
    """One row per run: its weight, the variant's shares, plain's class share, the score and eligibility."""
    rows = []
    for run in runs:
        if run.get("split") != "val":
            raise ValueError(f"weights are picked on the val split; a run of split {run.get('split')!r} was given")
        v, plain = run["variants"].get(variant), run["variants"].get("plain")
        if v is None or plain is None:
            raise ValueError(f"a run at weight {run.get('weight')} lacks {variant!r} or plain "
                             f"(it has {', '.join(run['variants'])})")
        share = {m: v[m]["share"] for m in ("clicked", "leak", "prompt", "class")}
        rows.append({"weight": float(run["weight"]), **share, "plain_class": plain["class"]["share"],
                     "score": pick_score(v), "eligible": keeps_class(run, variant)})
    weights = [r["weight"] for r in rows]
    if len(set(weights)) != len(weights):
        raise ValueError(f"two runs share a weight ({weights}): give one val run per weight")
    return sorted(rows, key=lambda r: r["weight"])


def pick_weight(rows: list[dict]) -> float | None:
    """The eligible row with the highest score (rounded as the table prints it), ties to the lower weight;
    None when no weight keeps the class."""
    ok = [r for r in rows if r["eligible"]]
    if not ok:
        return None
    return min(ok, key=lambda r: (-round(r["score"], 2), r["weight"]))["weight"]


def pick_table(rows: list[dict], variant: str) -> str:
    lines = [f"| weight | {variant} clicked | leak | prompt | class (plain) | score | eligible |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['weight']:g} | {r['clicked']:.2f} | {r['leak']:.2f} | {r['prompt']:.2f} | "
                     f"{r['class']:.2f} ({r['plain_class']:.2f}) | {r['score']:.2f} | "
                     f"{'yes' if r['eligible'] else 'no: class lost'} |")
    return "\n".join(lines)
