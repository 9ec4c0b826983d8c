"""Benchmark of the pack's subject selection (built-in weight-free features) against a naive baseline.

Scene families (``bench/selection_scenes.py``): separated and touching look-alikes, strongly textured
backgrounds, background patches of the subject's colour, thin parts (legs, tails), many look-alikes,
subjects cut by the border. One click per target at its deepest interior point. Per family it prints
the pack's mean IoU of ``Selection.mask`` with the clicked subject, the naive baseline's mean IoU on the
same clicks (per-pixel colour distance to the clicked colour, Otsu threshold, the connected region
under the click), accuracy (IoU with the target above IoU with every other subject) and refusals
(clicks that raised instead of selecting). Thin parts: the fraction of thin-part pixels kept. Where the
IoU is lost (``loss_split``): over-selection (precision < 0.75), under-selection (recall < 0.75), boundary.

Users do not click the deepest point: each target is also clicked once at a random interior pixel
between 1/4 and 3/4 of its depth (distance to its boundary; seeded, drawn apart from the scenes so the
deepest-click figures stay as they were); ``off`` is the pack's mean IoU for those clicks.

Then: the shipped example ``assets/two_dogs.png`` (left dog with the example workflows' points; IoU
and how much of its tail is kept); real photos (two DreamBench photos of the same class side by side,
a click at the centre of each half: the share of the mask inside the clicked half), read from a
``fetch`` of ``google/dreambooth`` when one is on this machine (``--dreambooth GIT_DIR``; skipped and
said so otherwise); timings at 1024x1024 (1 positive + 1 negative point) on a strongly textured image
and on the same subjects on a flat background, and 4096x4096. The last line is::

    selection separated_iou=.. separated_acc=.. touching_iou=.. touching_acc=.. ms_1024=.. \
baseline_iou=.. refused=.. worst_margin=.. ms_1024_flat=.. tex_ratio=.. off_touching=.. off_min=.. touching_neg2=..

``ms_1024`` is the textured image; ``baseline_iou`` the baseline's separated IoU; ``refused`` counts
refusals over all families; ``worst_margin`` is min over families of (pack IoU - baseline IoU); ``off_touching`` the touching
family's ``off`` IoU, ``off_min`` the lowest ``off`` IoU over families (a refused click counts as 0),
``touching_neg2`` the touching family's IoU after a user's corrections (``corrected``: where one click took in
a look-alike, up to two negative points at the deepest points of the look-alikes it took).

``--diagnose DIR`` lists every deep click whose IoU is below 0.75, with the kind of loss and, for over-selection,
how strong an outline and how deep a neck the true border offered, and writes a picture of each into DIR
(``bench/selection_diagnose.py``).

``--heldout`` runs the families of a second generator (``bench/selection_heldout.py``: other shapes, surfaces,
backgrounds) that no constant was tuned on, and prints ``heldout separated_iou=.. separated_baseline=..
touching_iou=.. touching_baseline=.. off_touching=..``.

Usage: python bench/selection.py [--scenes 40] [--size 512] [--seed 0] [--dreambooth GIT_DIR] [--threads 2]
       [--families touching,...] [--heldout] [--no-split] [--diagnose DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from p3s_core.features import rgb_to_lab  # noqa: E402
from p3s_core.points import PointSet  # noqa: E402
from p3s_core.rngr import select_subject  # noqa: E402
from selection_diagnose import captured_split, finding, picture  # noqa: E402
from selection_heldout import HELDOUT_FAMILIES, make_heldout  # noqa: E402
from selection_scenes import FAMILIES, click_point, make_scene, off_centre_point  # noqa: E402



def _find_dreambooth() -> Path:
    """$P3S_DREAMBOOTH_GIT, else a fetched copy (``.mirror/google+dreambooth/repo``) beside a parent folder."""
    if os.environ.get("P3S_DREAMBOOTH_GIT"):
        return Path(os.environ["P3S_DREAMBOOTH_GIT"])
    for parent in REPO.parents:
        candidate = parent / ".mirror" / "google+dreambooth" / "repo"
        if (candidate / "HEAD").is_file():
            return candidate
    return Path(".mirror/google+dreambooth/repo")


# Classes with at least two DreamBench subjects: consecutive subjects of a class make a pair.
DREAMBENCH_CLASSES = {
    "backpack": ["backpack", "backpack_dog"], "cat": ["cat", "cat2"],
    "sneaker": ["colorful_sneaker", "shiny_sneaker"],
    "stuffed animal": ["bear_plushie", "grey_sloth_plushie", "wolf_plushie"],
    "dog": ["dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"],
    "toy": ["duck_toy", "monster_toy", "poop_emoji", "rc_car", "robot_toy"],
}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def baseline_select(image: np.ndarray, clicks: list[tuple[float, float]]) -> np.ndarray:
    """The naive baseline: per-pixel Lab distance to the colour under the click(s), Otsu threshold,
    the connected region(s) under the clicks, holes filled. No features, no refinement."""
    x = torch.from_numpy(ndimage.gaussian_filter(image, (1, 1, 0))).permute(2, 0, 1)[None]
    lab = rgb_to_lab(x)[0].permute(1, 2, 0).numpy()
    h, w = lab.shape[:2]
    dist = np.full((h, w), np.inf, np.float32)
    for cx, cy in clicks:
        r, c = min(h - 1, int(cy)), min(w - 1, int(cx))
        ref = lab[max(0, r - 2):r + 3, max(0, c - 2):c + 3].reshape(-1, 3).mean(0)
        dist = np.minimum(dist, np.linalg.norm(lab - ref, axis=-1))
    hist, edges = np.histogram(dist, bins=256)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * centres)
    w1 = w0[-1] - w0
    between = np.where(w1 > 0, (m0[-1] * w0 / w0[-1] - m0) ** 2 / np.maximum(w0 * w1 / w0[-1], 1e-12), -1)
    near = dist <= centres[int(np.argmax(between))]
    lab_ids, _ = ndimage.label(near)
    ids = {int(lab_ids[min(h - 1, int(cy)), min(w - 1, int(cx))]) for cx, cy in clicks} - {0}
    return ndimage.binary_fill_holes(np.isin(lab_ids, list(ids)))


def loss_split(ious: list[float], precision: list[float], recall: list[float], line: float = 0.75) -> dict:
    """Where a family's mean IoU is lost (the three parts sum to 1 - mean IoU): targets that took in a
    look-alike or the background (precision below ``line``: over-selection), targets cut short (recall
    below ``line``: under-selection), and the rest (the boundary)."""
    iou_, p, r = (np.asarray(x, float) for x in (ious, precision, recall))
    over = p < line
    under = (r < line) & ~over
    n = max(1, len(iou_))
    return {"over": float((1 - iou_[over]).sum() / n), "under": float((1 - iou_[under]).sum() / n),
            "boundary": float((1 - iou_[~over & ~under]).sum() / n)}


def pack_select(image: np.ndarray, clicks, negative=(), **kwargs) -> np.ndarray | None:
    h, w = image.shape[:2]
    pts = PointSet.from_pixels(positive=clicks, negative=negative, width=w, height=h)
    try:
        return select_subject(torch.from_numpy(image), pts, **kwargs).mask.numpy() > 0.5
    except ValueError:
        return None


def corrected(image: np.ndarray, masks: list[np.ndarray], j: int, sel: np.ndarray, rounds: int = 2,
              **kwargs) -> tuple[np.ndarray, int]:
    """What a user's corrections give: while the selection of target ``j`` has taken in a look-alike
    (precision < 0.75), one more negative point at the deepest point of the look-alike it holds most of, up
    to ``rounds`` points. Returns (the selection, the negative points used)."""
    m, negs = masks[j], []
    for _ in range(rounds):
        taken = [k for k in range(len(masks)) if k != j and k not in negs and (sel & masks[k]).any()]
        if not taken or (sel & m).sum() >= 0.75 * max(1, sel.sum()):
            break
        negs.append(max(taken, key=lambda k: int((sel & masks[k]).sum())))
        got = pack_select(image, [click_point(m)], negative=[click_point(masks[k]) for k in negs], **kwargs)
        sel = np.zeros_like(m) if got is None else got
    return sel, len(negs)


def run_family(family: str, n: int, size: int, seed: int, diagnose: Path | None = None, line: float = 0.75,
               **kwargs) -> dict:
    """One family's figures. ``diagnose``: a folder; every deep click whose IoU is below ``line`` gets a row in
    ``out["findings"]`` and a picture there (``selection_diagnose``)."""
    index = (FAMILIES + HELDOUT_FAMILIES).index(family)
    make = make_heldout if family in HELDOUT_FAMILIES else make_scene
    rng = np.random.default_rng([seed, index])
    off_rng = np.random.default_rng([seed, index, 1])  # apart: the scenes stay as they were
    out = {"iou": [], "base": [], "acc": [], "refused": 0, "thin": [], "off": [], "precision": [], "recall": [],
           "neg2": [], "corrected": 0, "findings": []}
    for si in range(n):
        scene = make(rng, family, size)
        if len(scene.masks) < 2:
            continue
        for j, m in enumerate(scene.masks):
            click = click_point(m)
            with captured_split() if diagnose is not None else contextlib.nullcontext({}) as seen:
                sel = pack_select(scene.image, [click], **kwargs)
            if sel is None:
                out["refused"] += 1
                sel = np.zeros_like(m)
            ious = [iou(sel, o) for o in scene.masks]
            if diagnose is not None and ious[j] < line:
                found = finding(si, j, scene.masks, sel, seen.get("lab"))
                out["findings"].append(found)
                if seen:
                    picture(scene.image, m, seen, diagnose / f"{family}_s{seed}_{si:03d}_{j}.png")
            out["iou"].append(ious[j])
            out["precision"].append(float((sel & m).sum() / max(1, sel.sum())))
            out["recall"].append(float((sel & m).sum() / max(1, m.sum())))
            out["acc"].append(float(all(ious[j] > o for k, o in enumerate(ious) if k != j)))
            fixed, used = corrected(scene.image, scene.masks, j, sel, **kwargs)
            out["neg2"].append(iou(fixed, m))
            out["corrected"] += used > 0
            out["base"].append(iou(baseline_select(scene.image, [click]), m))
            thin = scene.thin_masks[j]
            if thin is not None and thin.sum() > 0:
                out["thin"].append(float((sel & thin).sum() / thin.sum()))
            off = pack_select(scene.image, [off_centre_point(m, off_rng)], **kwargs)
            if off is None:
                out["refused"] += 1
                off = np.zeros_like(m)
            out["off"].append(iou(off, m))
    return out


def two_dogs() -> tuple[float, float, float]:
    """Left dog of the shipped example with the workflows' points: (IoU, tail kept, baseline IoU)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_reference as mr

    img = np.asarray(Image.open(REPO / "assets" / "two_dogs.png").convert("RGB"), np.float32) / 255
    labels = np.asarray(Image.open(REPO / "assets" / "two_dogs_masks.png").convert("L")) // 100
    left = labels == 1
    yy, xx = np.mgrid[0:mr.H, 0:mr.W].astype(np.float32)
    cx, cy = 140, 205  # the left dog's centre in make_reference.make()
    tail = (mr._ellipse(xx, yy, cx - 58, cy + 20, 30, 9, angle=-0.9) <= 1) & left
    tail &= (mr._ellipse(xx, yy, cx - 8, cy + 18, 50, 58, angle=0.25) > 1)
    tail &= (mr._ellipse(xx, yy, cx - 30, cy + 50, 32, 26) > 1)
    sel = pack_select(img, mr.LEFT_DOG_POINTS, [mr.RIGHT_DOG_POINT])
    sel = np.zeros_like(left) if sel is None else sel
    base = baseline_select(img, mr.LEFT_DOG_POINTS)
    return iou(sel, left), float((sel & tail).sum() / tail.sum()), iou(base, left)


def _git_image(git_dir: Path, path: str, side: int) -> np.ndarray:
    data = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout
    im = Image.open(io.BytesIO(data)).convert("RGB")
    s = min(im.size)
    im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width + s) // 2, (im.height + s) // 2))
    return np.asarray(im.resize((side, side), Image.BILINEAR), np.float32) / 255


def dreambench(git_dir: Path, side: int = 384) -> tuple[list[float], int] | None:
    """Two photos of one class side by side, a click at the centre of each half: the share of the
    mask in the clicked half, per click, and the number of refused clicks. None if no fetched copy."""
    if not (git_dir / "HEAD").is_file():
        return None
    shares, refused = [], 0
    for subjects in DREAMBENCH_CLASSES.values():
        for a, b in zip(subjects, subjects[1:]):
            for k in ("00", "01"):
                pair = np.concatenate([_git_image(git_dir, f"dataset/{s}/{k}.jpg", side) for s in (a, b)], 1)
                for half in (0, 1):
                    sel = pack_select(pair, [(side * (half + 0.5), side / 2)])
                    if sel is None:
                        refused += 1
                        continue
                    inside = sel[:, half * side:(half + 1) * side].sum()
                    shares.append(float(inside / max(1, sel.sum())))
    return shares, refused


def _median_ms(image: torch.Tensor, pts: PointSet, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        select_subject(image, pts)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def walker_cost(size: int = 1024, scenes: int = 6, reps: int = 5) -> tuple[float, float, int, int]:
    """What the random walker on the border between touching look-alikes costs: median ms per selection on
    touching look-alikes at ``size`` px (one click per target), with the walker and without it, interleaved
    in one process; and how many of the selections ran the walker, of how many."""
    from p3s_core import split
    rng = np.random.default_rng(321)
    calls = [(torch.from_numpy(sc.image), PointSet.from_pixels(positive=[click_point(m)], width=size, height=size))
             for sc in (make_scene(rng, "touching", size) for _ in range(scenes)) for m in sc.masks]
    walked, real = 0, split._walk_border

    def counted(keep, inside, *rest):
        nonlocal walked
        walked += 1
        return real(keep, inside, *rest)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for rep in range(reps + 1):  # the first round warms up
            for on in (True, False):
                split._walk_border = counted if on else (lambda keep, inside, *rest: inside)
                for image, pts in calls:
                    t0 = time.perf_counter()
                    select_subject(image, pts)
                    if rep:
                        times[on].append((time.perf_counter() - t0) * 1000)
    finally:
        split._walk_border = real
    return statistics.median(times[True]), statistics.median(times[False]), walked // (reps + 1), len(calls)


def timing(size: int = 1024, reps: int = 15) -> tuple[float, float]:
    """Median ms at size x size, 1 positive + 1 negative point: (textured image, flat background).
    The two are interleaved in one process so machine load hits both alike."""
    scene = make_scene(np.random.default_rng(123), "textured", size)
    anywhere = np.any(scene.masks, axis=0)
    flat = np.where(anywhere[..., None], scene.image, scene.image[~anywhere].mean(0)).astype(np.float32)
    pts = PointSet.from_pixels(positive=[click_point(scene.masks[0])], negative=[click_point(scene.masks[1])],
                               width=size, height=size)
    tex_t, flat_t = torch.from_numpy(scene.image), torch.from_numpy(flat)
    select_subject(tex_t, pts), select_subject(flat_t, pts)  # warm-up
    tex, fl = [], []
    for _ in range(reps):
        tex += _median_ms(tex_t, pts, 1)
        fl += _median_ms(flat_t, pts, 1)
    return statistics.median(tex), statistics.median(fl)


def big_run() -> None:
    scene = make_scene(np.random.default_rng(7), "separated", 512)
    x, y = click_point(scene.masks[0])
    big = torch.nn.functional.interpolate(torch.from_numpy(scene.image).permute(2, 0, 1)[None], size=(4096, 4096))
    big = big[0].permute(1, 2, 0).contiguous()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pts = PointSet.from_pixels(positive=[(x, y)], width=512, height=512)  # rescaled to 4096
    t0 = time.perf_counter()
    sel = select_subject(big, pts)
    ms = (time.perf_counter() - t0) * 1000
    assert sel.mask.shape == (4096, 4096)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"4096x4096: {ms:.0f} ms, peak RSS {peak:.0f} MiB (before the call {before:.0f} MiB)")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=40, help="scenes per family")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default=None, help=f"default: {','.join(FAMILIES)}")
    ap.add_argument("--heldout", action="store_true",
                    help=f"the families of a second generator nothing was tuned on ({','.join(HELDOUT_FAMILIES)})")
    ap.add_argument("--dreambooth", type=Path, default=None,
                    help="git directory of a fetched google/dreambooth")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the goal is for 2)")
    ap.add_argument("--no-split", action="store_true",
                    help="split_touching off: what the look-alike split adds (or costs) on each family")
    ap.add_argument("--diagnose", type=Path, default=None,
                    help="folder: one row and one picture per deep click with IoU below 0.75 (bench/selection_diagnose.py)")
    args = ap.parse_args()
    args.families = args.families or ",".join(HELDOUT_FAMILIES if args.heldout else FAMILIES)
    return args


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    figs, refused, margins, offs, negs = {}, 0, [], {}, {}
    for fam in args.families.split(","):
        if args.diagnose is not None:
            args.diagnose.mkdir(parents=True, exist_ok=True)
        r = run_family(fam, args.scenes, args.size, args.seed, args.diagnose, split_touching=not args.no_split)
        for f in r["findings"]:
            print(f"  {fam} {f.row()}")
        figs[fam] = (float(np.mean(r["iou"])), float(np.mean(r["acc"])), float(np.mean(r["base"])))
        refused += r["refused"]
        margins.append(figs[fam][0] - figs[fam][2])
        offs[fam] = float(np.mean(r["off"]))
        thin = f", thin parts kept {np.mean(r['thin']):.3f}" if r["thin"] else ""
        lost = loss_split(r["iou"], r["precision"], r["recall"])
        negs[fam] = float(np.mean(r["neg2"]))
        print(f"{fam:12s}: {len(r['iou']):3d} targets, IoU {figs[fam][0]:.3f} off {offs[fam]:.3f} "
              f"(baseline {figs[fam][2]:.3f}), "
              f"accuracy {figs[fam][1]:.3f}, refused {r['refused']}{thin}; IoU lost to over-selection "
              f"{lost['over']:.3f}, under-selection {lost['under']:.3f}, boundary {lost['boundary']:.3f}; "
              f"with up to 2 negative points on the look-alikes taken in {negs[fam]:.3f} "
              f"({r['corrected']} targets corrected)")
    print(f"families took {time.time() - t0:.0f} s")
    d_iou, d_tail, d_base = two_dogs()
    print(f"two_dogs (left dog, example points): IoU {d_iou:.3f} (baseline {d_base:.3f}), tail kept {d_tail:.3f}")
    args.dreambooth = args.dreambooth or _find_dreambooth()
    db = dreambench(args.dreambooth)
    if db is None:
        print(f"dreambench: skipped (no fetched google/dreambooth at {args.dreambooth}; pass --dreambooth)")
    else:
        shares, db_refused = db
        refused += db_refused
        print(f"dreambench pairs: {len(shares) + db_refused} clicks, mask share in the clicked half "
              f"{np.mean(shares):.3f} (min {min(shares):.2f}), refused {db_refused}")
    ms = ms_flat = float("nan")
    if not args.no_timing:
        ms, ms_flat = timing()
        print(f"1024x1024, 1+1 points, median of 15: textured {ms:.1f} ms, flat {ms_flat:.1f} ms, "
              f"ratio {ms / ms_flat:.2f} ({args.threads} threads; load average {os.getloadavg()[0]:.2f})")
        with_walk, without, walked, total = walker_cost()
        print(f"touching look-alikes at 1024 px, one click, median: {with_walk:.1f} ms with the border walker, "
              f"{without:.1f} ms without (ratio {with_walk / without:.2f}; the walker ran in {walked} of {total} "
              f"selections, interleaved)")
        big_run()
    if any(f in figs for f in HELDOUT_FAMILIES):
        hs, ht = figs.get("heldout_separated", (nan3 := (float("nan"),) * 3)), figs.get("heldout_touching", nan3)
        print(f"heldout separated_iou={hs[0]:.3f} separated_baseline={hs[2]:.3f} touching_iou={ht[0]:.3f} "
              f"touching_baseline={ht[2]:.3f} off_touching={offs.get('heldout_touching', float('nan')):.3f}")
    sep, tou = figs.get("separated", (0, 0, 0)), figs.get("touching", (0, 0, 0))
    print(f"selection separated_iou={sep[0]:.2f} separated_acc={sep[1]:.2f} touching_iou={tou[0]:.2f} "
          f"touching_acc={tou[1]:.2f} ms_1024={ms:.0f} baseline_iou={sep[2]:.2f} refused={refused} "
          f"worst_margin={min(margins):+.2f} ms_1024_flat={ms_flat:.0f} tex_ratio={ms / ms_flat:.2f} "
          f"off_touching={offs.get('touching', float('nan')):.3f} off_min={min(offs.values()):.3f} "
          f"touching_neg2={negs.get('touching', float('nan')):.3f}")


if __name__ == "__main__":
    main()
