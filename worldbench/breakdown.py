"""Breakdowns of a benchmark run: clicked on the cases the world model can draw apart from the others, the colours
the reader read per clicked colour, and runs of the same cases merged side by side (``python -m worldbench merge``).
"""
from __future__ import annotations

from .paired import per_case_means


DRAWABLE = 0.5  # a case is drawable when "named" gets the clicked identity in at least this share of its samples


def drawable_split(res: dict, by: str = "named", at: float = DRAWABLE) -> dict | None:
    """Every variant's clicked share on the cases the world model can draw (``by``, the identity written into
    the prompt, gets it in at least ``at`` of the case's samples) and on the others: this parts what the world
    model cannot draw from what the method does not carry. None when the run lacks ``by``."""
    per_case = res.get("per_case") or []
    ok = per_case_means(per_case, by, "clicked")
    if ok is None:
        return None
    ok = ok >= at
    out = {"cases": int(ok.sum()), "of": len(ok), "variants": {}}
    for name in res["variants"]:
        m = per_case_means(per_case, name, "clicked")
        if m is not None:
            out["variants"][name] = {"drawable": float(m[ok].mean()) if ok.any() else None,
                                     "other": float(m[~ok].mean()) if (~ok).any() else None}
    return out


def drawable_table(d: dict | None) -> str:
    """Markdown of a :func:`drawable_split` result (empty for None: the run lacks named)."""
    if d is None:
        return ""
    f = lambda v: "na" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"| variant | clicked on the {d['cases']} drawable cases | on the other {d['of'] - d['cases']} |",
             "|---|---|---|"]
    lines += [f"| {n} | {f(v['drawable'])} | {f(v['other'])} |" for n, v in d["variants"].items()]
    return "\n".join(lines)


def merge_runs(runs: list[dict], labels: list[str | None] | None = None) -> dict:
    """One run from several of the same split, cases, seeds, steps, cfg and world (their variants side by side;
    a variant in more than one run keeps the first run's samples, unless its run has a label: then every variant
    of that run but plain is named ``variant_label``). Every variant samples a case with the same seeds, so
    variants from separate runs pair as if they had shared one."""
    labels = labels or [None] * len(runs)
    keys = ("split", "cases", "seeds", "steps", "cfg", "world")
    first = runs[0]
    for r in runs[1:]:
        diff = [k for k in keys if r.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"worldbench merge: the runs differ in {', '.join(diff)} "
                             f"({', '.join(f'{k}={first.get(k)!r} vs {r.get(k)!r}' for k in diff)}): "
                             "merge only runs of the same split, cases, seeds, steps, cfg and world")
    variants, rows = {}, [dict(row, variants={}) for row in first["per_case"]]
    for r, label in zip(runs, labels):
        if [row.get("case") for row in r["per_case"]] != [row.get("case") for row in rows]:
            raise ValueError("worldbench merge: the runs hold different cases: merge only runs of the same cases")
        for name, s in r["variants"].items():
            new = f"{name}_{label}" if label and name != "plain" else name
            if new in variants:
                continue
            variants[new] = s
            for row, theirs in zip(rows, r["per_case"]):
                row["variants"][new] = theirs["variants"][name]
    return {**{k: first.get(k) for k in keys}, "variants": variants, "per_case": rows}


def colour_confusion(res: dict, variant: str) -> dict[str, dict[str, int]]:
    """{clicked colour: {colour read on the main subject ("none": no subject found): samples}} for ``variant``
    (runs from before the readings were stored give {})."""
    out: dict[str, dict[str, int]] = {}
    for row in res.get("per_case") or []:
        for sample in row["variants"].get(variant, []):
            if "read" not in sample:
                return {}
            got = "none" if sample["read"] is None else sample["read"][1]
            counts = out.setdefault(row["identity"][1], {})
            counts[got] = counts.get(got, 0) + 1
    return out


def confusion_table(res: dict, variant: str) -> str:
    """Markdown of :func:`colour_confusion` (empty when the run holds no readings)."""
    conf = colour_confusion(res, variant)
    if not conf:
        return ""
    lines = [f"| clicked colour ({variant}) | n | colours read, most first |", "|---|---|---|"]
    for colour, counts in sorted(conf.items()):
        n = sum(counts.values())
        read = ", ".join(f"{c} {k / n:.2f}" for c, k in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines.append(f"| {colour} | {n} | {read} |")
    return "\n".join(lines)
