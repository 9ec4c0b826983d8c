"""The world: look-alike subjects in named scenes, deterministic by seed, with exact ground truth.

A subject's *identity* is (class, body colour, coat pattern, collar colour). Every render carries its
caption, instance label map and the identity of each subject, so everything downstream (the reader,
the world model, the benchmark) can be checked against known truth.

Seeds: every image is drawn from ``numpy.random.default_rng([STREAM, index])`` with one stream per
purpose (world-model training images, reader training, each benchmark split, pairs), so an image is
the same on every machine and streams never overlap.

Identity splits (the benchmark's "identities the adapter never trained on"): every identity belongs to
one of ``train`` / ``val`` / ``test`` by a fixed hash of its attributes (70 / 10 / 20 %). Benchmark
cases of split s click a subject whose identity is in split s; the adapter's training data
(:mod:`worldbench.export`) holds ``train`` identities only. The world model and the reader learn the
whole world (all identities), as a pretrained base model and a measuring instrument would.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from . import draw

CLASSES = ("dog", "bird")
COLOURS = tuple(draw.BODY_COLOURS)
PATTERNS = ("plain", "spots", "stripes")
COLLARS = tuple(draw.COLLAR_COLOURS)
SCENES = ("lawn", "beach", "snow", "room", "night")
SCENE_PHRASES = {"lawn": "on the lawn", "beach": "on a beach", "snow": "in the snow", "room": "in a room",
                 "night": "at night"}
PATTERN_WORDS = {"plain": "plain", "spots": "spotted", "stripes": "striped"}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
SPLITS = ("train", "val", "test")

# Random streams (first entry of the seed sequence); one per purpose so images never repeat across uses.
STREAMS = {"world": 11, "reader": 12, "reader_eval": 13, "train": 21, "val": 22, "test": 23,
           "pairs_train": 31, "pairs_val": 32, "pairs_test": 33, "probe": 41}


@dataclass(frozen=True)
class Identity:
    cls: str
    colour: str
    pattern: str
    collar: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.cls, self.colour, self.pattern, self.collar)

    def describe(self) -> str:
        """'a red spotted dog with a green collar' (the attribute phrase some training captions use)."""
        return f"a {self.colour} {PATTERN_WORDS[self.pattern]} {self.cls} with a {self.collar} collar"

    def split(self) -> str:
        h = zlib.crc32("/".join(self.key).encode()) % 10
        return "test" if h < 2 else "val" if h < 3 else "train"


ALL_IDENTITIES = tuple(Identity(*k) for k in itertools.product(CLASSES, COLOURS, PATTERNS, COLLARS))


def identities(split: str | None = None, cls: str | None = None) -> list[Identity]:
    return [i for i in ALL_IDENTITIES if (split is None or i.split() == split) and (cls is None or i.cls == cls)]


@dataclass(frozen=True)
class Subject:
    identity: Identity
    x: float  # centre, fraction of the side
    ground: float  # y where the feet touch the ground, fraction of the side
    size: float  # dog: body length, bird: height (fraction of the side)
    facing: float  # +1 right, -1 left
    pose: tuple[float, float, float]  # legs/wing, tail, head, each -1..1
    seed: int  # pattern placement


@dataclass(frozen=True)
class Scene:
    scene: str
    subjects: tuple[Subject, ...]
    seed: int  # background texture


@dataclass
class Render:
    """One drawn image: ``image`` uint8 [S, S, 3]; ``labels`` uint8 [S, S] (0 background, i + 1 subject i)."""
    scene: Scene
    image: np.ndarray
    labels: np.ndarray
    caption: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def identities(self) -> list[Identity]:
        return [s.identity for s in self.scene.subjects]

    def mask(self, i: int) -> np.ndarray:
        return self.labels == i + 1

    def masks(self) -> np.ndarray:
        return np.stack([self.mask(i) for i in range(len(self.scene.subjects))]) if self.scene.subjects else \
            np.zeros((0,) + self.labels.shape, bool)


def _shadow(canvas: np.ndarray, labels: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> None:
    big = canvas.shape[0]
    y0, y1 = max(0, int((cy - ry) * big)), min(big, int((cy + ry) * big) + 1)
    x0, x1 = max(0, int((cx - rx) * big)), min(big, int((cx + rx) * big) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) / big
    sh = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1) & (labels[y0:y1, x0:x1] == 0)
    canvas[y0:y1, x0:x1][sh] *= 0.72


def render(scene: Scene, side: int = 64) -> Render:
    """Draw ``scene`` at ``side`` x ``side`` pixels (deterministic)."""
    big = side * draw.SUPERSAMPLE
    canvas, _ = draw.background(scene.scene, big, np.random.default_rng(scene.seed))
    labels = np.zeros((big, big), np.int64)
    # back to front: a subject standing lower in the picture is nearer and drawn over the others
    order = sorted(range(len(scene.subjects)), key=lambda i: scene.subjects[i].ground)
    for i in order:
        s = scene.subjects[i]
        _shadow(canvas, labels, s.x, s.ground + 0.005, 0.45 * s.size, 0.05 * s.size)
        p = draw.Painter(big, draw.subject_box(s.identity.cls, s.x, s.ground, s.size, s.facing))
        draw.PAINTERS[s.identity.cls](p, s.x, s.ground, s.size, s.facing, np.asarray(s.pose, np.float32),
                                      draw.BODY_COLOURS[s.identity.colour], s.identity.pattern,
                                      draw.COLLAR_COLOURS[s.identity.collar], np.random.default_rng(s.seed))
        p.paste(canvas, labels, i + 1)
    img, lab = draw.downsample(canvas, labels, len(scene.subjects), draw.SUPERSAMPLE)
    return Render(scene, (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), lab, caption(scene))


def caption(scene: Scene, attributes: bool = False) -> str:
    """'a dog on a beach', 'two birds in the snow'; with ``attributes`` (one subject only) the identity
    is named: 'a red spotted dog with a green collar on a beach'."""
    n = len(scene.subjects)
    if n == 0:
        return SCENE_PHRASES[scene.scene].split(" ", 1)[1]
    cls = scene.subjects[0].identity.cls
    if attributes and n == 1:
        return f"{scene.subjects[0].identity.describe()} {SCENE_PHRASES[scene.scene]}"
    noun = cls if n == 1 else cls + "s"
    return f"{COUNT_WORDS[n]} {noun} {SCENE_PHRASES[scene.scene]}"


def prompt(cls: str, scene: str, count: int = 1) -> str:
    """The benchmark's kind of prompt: class, count and scene, never identity attributes."""
    return f"{COUNT_WORDS[count]} {cls if count == 1 else cls + 's'} {SCENE_PHRASES[scene]}"


# ---- sampling scenes ---------------------------------------------------------------------------------
SIZES = {1: (0.50, 0.62), 2: (0.36, 0.42), 3: (0.30, 0.34)}  # dog body length by subject count
BIRD_SCALE = 0.95  # bird height relative to a dog's body length


def _lookalike(rng: np.random.Generator, ident: Identity, taken: set, pool: list[Identity] | None,
               other_colour: bool = False) -> Identity:
    """Same class, one to three identity attributes changed (a look-alike, never a twin); with
    ``other_colour`` the body colour is always one of the changed attributes."""
    cands = [i for i in (pool or identities(cls=ident.cls)) if i.cls == ident.cls and i.key not in taken
             and (not other_colour or i.colour != ident.colour)]
    diffs = np.array([sum(a != b for a, b in zip(i.key[1:], ident.key[1:])) for i in cands])
    want = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
    close = [c for c, d in zip(cands, diffs) if d == want] or [c for c, d in zip(cands, diffs) if d > 0]
    return close[int(rng.integers(len(close)))]


def _layout(rng: np.random.Generator, n: int, size: float, cls: str) -> tuple[float, list[tuple[float, float, float]]]:
    """(size, [(x, ground, facing)]): side by side, sometimes touching or overlapping a little; the size
    shrinks when the row would not fit inside the picture."""
    facings = [float(rng.choice([-1.0, 1.0])) for _ in range(n)]
    gaps = rng.uniform(-0.12, 0.10, max(0, n - 1))
    width = lambda s: s * (n * draw.box_width(cls) + gaps.sum())  # noqa: E731
    size = min(size, 0.96 / (n * draw.box_width(cls) + gaps.sum()))
    left = rng.uniform(0.02, max(0.021, 0.98 - width(size)))
    out, prev = [], None
    for i in range(n):
        x0, _, x1, _ = draw.subject_box(cls, 0.0, 0.0, size, facings[i])
        ground = float(rng.uniform(0.82, 0.95))
        if prev is not None and gaps[i - 1] < 0 and abs(ground - prev) < 0.04:
            # overlapping neighbours stand at clearly different depths (the lower one is in front)
            ground = prev + 0.04 if prev < 0.885 else prev - 0.04
        out.append((left - x0, ground, facings[i]))
        prev = ground
        left += (x1 - x0) + (gaps[i] * size if i < n - 1 else 0)
    return size, out


def sample_scene(rng: np.random.Generator, *, n: int | None = None, scene: str | None = None,
                 cls: str | None = None, first: Identity | None = None, pool: list[Identity] | None = None,
                 twin_share: float = 0.0, count_p: tuple[float, float, float] = (0.45, 0.40, 0.15),
                 other_colour: bool = False) -> Scene:
    """A random scene. ``first``: identity of subject 0; ``pool``: identities to draw from (default all);
    the others are look-alikes of subject 0 (or, with probability ``twin_share``, identical twins), with
    ``other_colour`` always of another body colour than subject 0."""
    n = n or int(rng.choice([1, 2, 3], p=count_p))
    scene = scene or SCENES[int(rng.integers(len(SCENES)))]
    pool = pool or list(ALL_IDENTITIES)
    if first is None:
        cands = [i for i in pool if cls is None or i.cls == cls]
        first = cands[int(rng.integers(len(cands)))]
    twins = n > 1 and rng.random() < twin_share
    idents, taken = [first], {first.key}
    for _ in range(n - 1):
        nxt = first if twins else _lookalike(rng, first, taken, pool, other_colour)
        idents.append(nxt)
        taken.add(nxt.key)
    lo, hi = SIZES[n]
    size, places = _layout(rng, n, float(rng.uniform(lo, hi)) * (BIRD_SCALE if first.cls == "bird" else 1.0),
                           first.cls)
    subjects = []
    for ident, (x, ground, facing) in zip(idents, places):
        subjects.append(Subject(ident, x, ground, size * float(rng.uniform(0.95, 1.0)), facing,
                                tuple(float(v) for v in rng.uniform(-1, 1, 3)), int(rng.integers(2 ** 31))))
    order = rng.permutation(n)  # subject 0 is not always the leftmost
    return Scene(scene, tuple(subjects[i] for i in order), int(rng.integers(2 ** 31)))


def rng_for(stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([STREAMS[stream], int(index)])


def training_image(index: int, side: int = 64, twin_share: float = 0.15, attribute_share: float = 0.25) -> Render:
    """Image ``index`` of the world model's training set: any identity, any scene, 1-3 subjects; some
    single-subject captions name the identity (``attribute_share``), some two-subject images are twins."""
    rng = rng_for("world", index)
    sc = sample_scene(rng, twin_share=twin_share)
    r = render(sc, side)
    if len(sc.subjects) == 1 and rng.random() < attribute_share:
        r.caption = caption(sc, attributes=True)
    return r


# ---- benchmark cases and pairs -----------------------------------------------------------------------
@dataclass
class Case:
    """One benchmark case: a reference with look-alikes, a click on one of them, a prompt for another scene."""
    split: str
    index: int
    reference: Render
    target: int  # index of the clicked subject in reference.scene.subjects
    click: tuple[float, float]  # pixel (x, y) deep inside the target's torso (where a user clicks)
    prompt: str
    prompt_scene: str

    @property
    def identity(self) -> Identity:
        return self.reference.scene.subjects[self.target].identity

    @property
    def lookalikes(self) -> list[Identity]:
        return [s.identity for i, s in enumerate(self.reference.scene.subjects) if i != self.target]


def deepest_point(mask: np.ndarray, near: tuple[float, float] | None = None) -> tuple[float, float]:
    """Pixel centre (x, y) deep inside the mask, where a user would click: the deepest pixel, or with
    ``near`` (pixels) the pixel closest to it among those at least 60 % as deep as the deepest."""
    dt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    if near is not None:
        yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        score = np.where(dt >= 0.6 * dt.max(), -((xx + 0.5 - near[0]) ** 2 + (yy + 0.5 - near[1]) ** 2), -np.inf)
        y, x = np.unravel_index(int(np.argmax(score)), dt.shape)
    else:
        y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return float(x) + 0.5, float(y) + 0.5


def body_centre(s: Subject, side: int) -> tuple[float, float]:
    """Pixel position of the centre of a subject's torso (not its head or collar)."""
    up = 0.36 if s.identity.cls == "dog" else 0.42
    return s.x * side, (s.ground - up * s.size) * side


def test_case(split: str, index: int, side: int = 64) -> Case:
    """Case ``index`` of ``split``: 2-3 look-alikes (the clicked one's identity from ``split``; the others
    from any split), every subject at least 3 % of the image, and a prompt naming a different scene.

    The look-alikes always differ from the clicked subject in body colour (and in 0-2 more attributes):
    colour is the identity attribute the 64 px world's autoencoder carries (the reader reads it at 0.91
    through a round trip, pattern at 0.58 and collar at 0.68), so it is what ``clicked`` and ``leak`` are
    scored on; the full four-attribute identity is reported next to it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = rng_for(split, index)
    pool = identities(split)
    for _ in range(50):
        first = pool[int(rng.integers(len(pool)))]
        sc = sample_scene(rng, n=int(rng.choice([2, 3], p=[0.6, 0.4])), first=first, other_colour=True)
        r = render(sc, side)
        areas = [r.mask(i).sum() for i in range(len(sc.subjects))]
        if min(areas) >= 0.03 * side * side:
            break
    target = next(i for i, s in enumerate(sc.subjects) if s.identity == first)
    others = [s for s in SCENES if s != sc.scene]
    new_scene = others[int(rng.integers(len(others)))]
    click = deepest_point(r.mask(target), body_centre(sc.subjects[target], side))
    return Case(split, index, r, target, click, prompt(first.cls, new_scene), new_scene)


def pair(split: str, index: int, side: int = 64) -> tuple[Render, int, Render, int]:
    """The same identity in two different scenes: (reference render, its subject index, target render,
    its subject index). The reference has look-alikes half of the time; the target shows it alone or
    with look-alikes. What an adapter trains on (reference -> target)."""
    rng = rng_for("pairs_" + split, index)
    pool = identities(split)
    ident = pool[int(rng.integers(len(pool)))]
    scene_a = SCENES[int(rng.integers(len(SCENES)))]
    scene_b = [s for s in SCENES if s != scene_a][int(rng.integers(len(SCENES) - 1))]
    a = sample_scene(rng, n=int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])), scene=scene_a, first=ident, pool=pool)
    b = sample_scene(rng, n=int(rng.choice([1, 2], p=[0.7, 0.3])), scene=scene_b, first=ident, pool=pool)
    ra, rb = render(a, side), render(b, side)
    ia = next(i for i, s in enumerate(a.subjects) if s.identity == ident)
    ib = next(i for i, s in enumerate(b.subjects) if s.identity == ident)
    return ra, ia, rb, ib


def with_scene(scene: Scene, new_scene: str) -> Scene:
    """The same subjects in another scene (same poses and places)."""
    return replace(scene, scene=new_scene)
