"""Deterministic synthetic sample of the rare-species dataset in the "course layout".

The pipeline must run offline, so it generates its own small dataset: `metadata.csv` plus
`<phylum>_<family>/<eol_content_id>_<eol_page_id>_eol-full-size-copy.jpg` images. Each family
has a procedural look (a body built from polygons, a palette, a surface pattern), each species
(EOL page id) is a slight variant of it, and each image varies pose, scale, colours, background
clutter, noise and blur, so a classifier must learn shapes and patterns rather than one colour.

Output is byte-for-byte reproducible: every image draws from its own generator keyed by
(seed, family, image), rows are sorted by file_path and JPEGs are saved with fixed options and
no metadata.
"""

from __future__ import annotations

import csv
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rarespecies.core.files import atomic_path

HEADER = ("rare_species_id", "eol_content_id", "eol_page_id", "kingdom", "phylum", "family",
          "file_path")
_NAMESPACE = uuid.UUID("5b0c3a52-6f0e-4c1e-9d57-2a4f7f1f9e01")  # arbitrary but fixed forever
# Seed keys always have 4 entries: SeedSequence([s, 1]) equals SeedSequence([s, 1, 0]).
_FAMILY, _PLAN, _SPECIES, _RENDER = 1, 2, 3, 4

RGB = tuple[int, int, int]
# (shape, colour slot, centre x, centre y, radius x, radius y, angle in degrees) in body units;
# slots: 0 body (masked, patterned), 1 accent, 2 detail, 3 pattern ink.
Part = tuple[str, int, float, float, float, float, float]


@dataclass(frozen=True)
class Look:
    """A family's procedural appearance."""

    parts: tuple[Part, ...]
    base: RGB
    ink: RGB
    accent: RGB
    pattern: str  # plain, stripes, spots, rings or checks
    detail: RGB = (22, 20, 18)
    max_turn: float = 180.0  # upright animals (penguins, corals) barely rotate


def _legs(xs: tuple[float, ...], reach: float, tilt: float, w: float = 0.025) -> tuple[Part, ...]:
    return tuple(("r", 0, x, s * reach, w, reach, s * tilt) for x in xs for s in (-1, 1))


# Real families of the Rare Species dataset; phyla interleave so the first few span several.
FAMILIES: tuple[tuple[str, str, Look], ...] = (
    ("chordata", "ardeidae", Look((
        ("e", 0, 0, 0, .45, .22, -15), ("r", 0, .32, -.42, .06, .34, 28),
        ("e", 0, .5, -.78, .13, .09, 0), ("t", 1, .78, -.78, .2, .035, 0),
        ("r", 2, -.05, .58, .025, .38, 6), ("r", 2, .12, .58, .025, .38, -6)),
        (150, 160, 178), (95, 105, 125), (225, 185, 55), "stripes", max_turn=25)),
    ("arthropoda", "formicidae", Look((
        ("e", 0, -.4, 0, .3, .2, 0), ("e", 0, -.08, 0, .07, .05, 0), ("e", 0, .15, 0, .18, .08, 0),
        ("e", 0, .5, 0, .15, .14, 0), *_legs((-.02, .15, .3), .3, 25, .018),
        ("r", 2, .75, -.15, .02, .18, -50), ("r", 2, .75, .15, .02, .18, 50)),
        (110, 30, 22), (60, 15, 10), (0, 0, 0), "plain")),
    ("cnidaria", "acroporidae", Look((
        ("r", 0, 0, .55, .09, .4, 0), ("r", 0, -.3, .15, .07, .4, -35),
        ("r", 0, .3, .15, .07, .4, 35), ("r", 0, -.6, -.3, .06, .3, -20),
        ("r", 0, .6, -.32, .06, .3, 22), ("r", 0, 0, -.25, .07, .45, 4),
        ("r", 0, -.25, -.6, .05, .25, -10), ("r", 0, .25, -.65, .05, .25, 12),
        *(("s", 1, x, y, .11, .11, 0)
          for x, y in ((-.7, -.58), (.68, -.6), (0, -.7), (-.3, -.83), (.3, -.88)))),
        (175, 145, 115), (125, 80, 145), (120, 175, 215), "spots", max_turn=25)),
    ("mollusca", "unionidae", Look((
        ("e", 0, 0, 0, .72, .42, 8), ("e", 0, -.4, -.3, .16, .12, 0),
        ("r", 2, -.1, -.4, .35, .02, 8)),
        (100, 90, 52), (62, 52, 30), (0, 0, 0), "rings", detail=(40, 35, 25), max_turn=90)),
    ("chordata", "balaenidae", Look((
        ("e", 0, 0, 0, .78, .28, 0), ("e", 0, .5, .06, .32, .22, 12),
        ("r", 0, -.82, 0, .16, .06, 0), ("t", 0, -1.02, -.16, .2, .09, -120),
        ("t", 0, -1.02, .16, .2, .09, 120), ("t", 2, .15, .28, .16, .05, 110)),
        (48, 52, 62), (215, 210, 195), (0, 0, 0), "spots", max_turn=40)),
    ("arthropoda", "apidae", Look((
        ("e", 0, -.2, 0, .42, .26, 0), ("e", 0, .28, 0, .2, .2, 0), ("e", 2, .53, 0, .12, .14, 0),
        *_legs((.1, .25, .35), .32, 20, .02),
        ("e", 1, .05, -.32, .32, .13, -25), ("e", 1, .05, .32, .32, .13, 25)),
        (235, 185, 40), (25, 20, 15), (205, 220, 235), "stripes")),
    ("chordata", "psittacidae", Look((
        ("e", 0, 0, 0, .26, .4, 0), ("e", 0, .06, -.5, .19, .18, 0),
        ("r", 0, -.06, .72, .07, .36, 8), ("e", 1, -.1, .05, .15, .3, 12),
        ("t", 2, .27, -.47, .09, .08, 20), ("e", 2, .12, -.55, .04, .04, 0)),
        (205, 45, 40), (235, 200, 40), (40, 95, 205), "checks", max_turn=30)),
    ("cnidaria", "agariciidae", Look((
        ("e", 0, 0, 0, .72, .42, 0), ("e", 0, -.42, -.22, .42, .3, 20),
        ("e", 0, .45, -.18, .4, .3, -20), ("e", 0, 0, .32, .5, .25, 0)),
        (165, 115, 65), (110, 70, 40), (0, 0, 0), "rings", max_turn=40)),
    ("chordata", "bufonidae", Look((
        ("e", 0, 0, .05, .55, .4, 0), ("e", 0, .45, -.12, .26, .2, 0),
        ("r", 0, -.4, .42, .08, .22, 35), ("r", 0, .25, .45, .08, .22, -35),
        ("r", 0, -.62, .2, .07, .2, 70), ("e", 2, .55, -.28, .06, .06, 0)),
        (135, 115, 70), (85, 65, 40), (200, 175, 110), "spots", max_turn=30)),
    ("chordata", "spheniscidae", Look((
        ("e", 0, 0, 0, .3, .6, 0), ("e", 0, 0, -.62, .2, .18, 0),
        ("e", 0, -.32, -.02, .07, .3, 18), ("e", 0, .32, -.02, .07, .3, -18),
        ("e", 1, .04, .1, .2, .46, 0), ("t", 2, .24, -.6, .1, .04, 0),
        ("e", 2, 0, .6, .18, .05, 0)),
        (28, 28, 38), (28, 28, 38), (240, 240, 232), "plain", detail=(230, 140, 40), max_turn=20)),
    ("chordata", "carcharhinidae", Look((
        ("e", 0, 0, 0, .75, .17, 0), ("t", 0, 0, -.24, .2, .12, -90),
        ("t", 0, -.88, -.14, .22, .06, -145), ("t", 0, -.85, .1, .15, .05, 145),
        ("t", 0, .2, .2, .18, .06, 120), ("e", 1, .1, .07, .55, .07, 0)),
        (105, 120, 140), (105, 120, 140), (228, 228, 222), "plain", max_turn=60)),
    ("chordata", "dactyloidae", Look((
        ("e", 0, 0, 0, .42, .11, 0), ("t", 0, .55, 0, .18, .1, 0), ("t", 0, -.95, 0, .6, .06, 180),
        *_legs((-.25, .25), .2, 35, .03), ("e", 1, .38, .14, .1, .1, 0)),
        (80, 165, 65), (50, 120, 45), (230, 70, 50), "plain")),
    ("chordata", "salamandridae", Look((
        ("e", 0, 0, 0, .45, .1, 0), ("e", 0, .52, 0, .14, .1, 0), ("t", 0, -.9, 0, .5, .07, 180),
        *_legs((-.25, .25), .18, 40, .03)),
        (35, 32, 30), (240, 170, 20), (0, 0, 0), "spots")),
)

# Foliage, sand, water, rock, soil, sky: backgrounds are tinted versions of these.
_SCENES: tuple[RGB, ...] = ((90, 125, 60), (190, 170, 130), (60, 100, 140), (125, 125, 120),
                            (95, 75, 55), (165, 195, 215))

_t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
_STAR_R = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
_UNIT = {
    "e": np.stack([np.cos(_t), np.sin(_t)], 1),
    "r": np.array([[-1.0, -1], [1, -1], [1, 1], [-1, 1]]),
    "t": np.array([[-1.0, -1], [1, 0], [-1, 1]]),
    "s": np.stack([_STAR_R * np.sin(np.arange(10) * np.pi / 5),
                   -_STAR_R * np.cos(np.arange(10) * np.pi / 5)], 1),
}


@dataclass(frozen=True)
class SampleSpec:
    """What to generate: family count, long-tailed image counts, sizes and the seed."""

    families: int = len(FAMILIES)
    max_count: int = 60
    min_count: int = 8
    min_side: int = 200
    max_side: int = 1200
    grayscale_fraction: float = 0.03
    seed: int = 42

    def __post_init__(self) -> None:
        """Reject impossible specifications early, with a ValueError naming the field."""
        if not 1 <= self.families <= len(FAMILIES):
            raise ValueError(f"families must be between 1 and {len(FAMILIES)}")
        if not 1 <= self.min_count <= self.max_count:
            raise ValueError("need 1 <= min_count <= max_count")
        if not 8 <= self.min_side <= self.max_side:
            raise ValueError("need 8 <= min_side <= max_side")
        if not 0.0 <= self.grayscale_fraction <= 1.0 or self.seed < 0:
            raise ValueError("need 0 <= grayscale_fraction <= 1 and seed >= 0")


TINY = SampleSpec(families=4, max_count=8, min_count=5, min_side=48, max_side=96)


@dataclass(frozen=True)
class SampleRow:
    """One planned image: its metadata.csv fields plus what rendering needs."""

    rare_species_id: str
    eol_content_id: int
    eol_page_id: int
    phylum: str
    family: str
    file_path: str
    family_index: int
    species_index: int
    image_index: int
    width: int
    height: int
    grayscale: bool
    quality: int
    kingdom: str = "animalia"

    def csv_fields(self) -> list[str]:
        """Return the values in `HEADER` order."""
        return [str(getattr(self, key)) for key in HEADER]


def _rng(seed: int, tag: int, family: int, item: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, family, item])


def long_tail_counts(spec: SampleSpec) -> list[int]:
    """Images per family, geometric from `max_count` down to `min_count`.

    Args:
        spec: the sample specification.

    Returns:
        One count per family, non-increasing.
    """
    n = spec.families
    ratio = spec.min_count / spec.max_count
    return [round(spec.max_count * ratio ** (i / max(n - 1, 1))) for i in range(n)]


def _unique(value: int, used: set[int]) -> int:
    # Collisions are astronomically rare; bumping keeps ids unique without a global draw.
    while value in used:
        value += 1
    used.add(value)
    return value


def plan_sample(spec: SampleSpec) -> list[SampleRow]:
    """Decide every image (ids, path, size, grayscale) without rendering any pixels.

    Args:
        spec: the sample specification.

    Returns:
        The rows sorted by file_path, the order of metadata.csv.
    """
    rows: list[SampleRow] = []
    used_pages: set[int] = set()
    used_contents: set[int] = set()
    for fam, count in enumerate(long_tail_counts(spec)):
        phylum, family, _ = FAMILIES[fam]
        frng = _rng(spec.seed, _FAMILY, fam, 0)
        pages = [_unique(int(frng.integers(1_000_000, 60_000_000)), used_pages)
                 for _ in range(int(frng.integers(1, 4)))]
        for img in range(count):
            rng = _rng(spec.seed, _PLAN, fam, img)
            content = _unique(int(rng.integers(10_000_000, 99_000_000)), used_contents)
            long_side = int(rng.integers(spec.min_side, spec.max_side + 1))
            short_side = max(spec.min_side, round(long_side * rng.uniform(0.55, 1.0)))
            width, height = (long_side, short_side) if rng.random() < 0.6 else (short_side,
                                                                                  long_side)
            species = img % len(pages)  # every species gets images
            rows.append(SampleRow(
                rare_species_id=str(uuid.uuid5(_NAMESPACE, f"{spec.seed}/{family}/{content}")),
                eol_content_id=content, eol_page_id=pages[species], phylum=phylum,
                family=family,
                file_path=f"{phylum}_{family}/{content}_{pages[species]}_eol-full-size-copy.jpg",
                family_index=fam, species_index=species, image_index=img, width=width,
                height=height, grayscale=bool(rng.random() < spec.grayscale_fraction),
                quality=int(rng.integers(80, 91))))
    return sorted(rows, key=lambda row: row.file_path)


def _rot(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _shift(colour: RGB, delta: np.ndarray) -> RGB:
    return tuple(int(v) for v in np.clip(np.array(colour) + delta, 0, 255))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))


def _colour(rng: np.random.Generator) -> RGB:
    return tuple(int(v) for v in rng.integers(15, 241, size=3))


def _species_look(seed: int, fam: int, species: int) -> tuple[Look, float, float]:
    """A species variant: shifted palette, body stretch and pattern frequency."""
    look, rng = FAMILIES[fam][2], _rng(seed, _SPECIES, fam, species)
    delta = rng.integers(-18, 19, size=3)
    return (replace(look, base=_shift(look.base, delta), ink=_shift(look.ink, delta)),
            float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.8, 1.25)))


def _pattern(look: Look, body: list[Part], rng: np.random.Generator, freq: float) -> list[Part]:
    if look.pattern == "stripes":
        n, tilt = max(2, round(6 * freq)), float(rng.uniform(-20, 20))
        return [("r", 3, -1 + (2 * k + 1) / n, 0, 0.4 / n, 1.4, tilt) for k in range(n)]
    if look.pattern == "spots":  # placed inside body parts, so thin bodies get spots too
        area = np.array([rx * ry for *_, rx, ry, _ in body])
        spots: list[Part] = []
        for k in rng.choice(len(body), size=round(16 * freq), p=area / area.sum()):
            _, _, cx, cy, rx, ry, angle = body[k]
            x, y = _rot(angle) @ (rng.uniform(-0.75, 0.75, size=2) * (rx, ry)) + (cx, cy)
            r = min(0.1, min(rx, ry) * rng.uniform(0.2, 0.45)) / freq**0.5
            spots.append(("e", 3, float(x), float(y), r, r, 0))
        return spots
    if look.pattern == "rings":
        n = max(3, round(7 * freq))
        return [("e", 3 if k % 2 else 0, 0, 0, 1.2 * k / n, 1.2 * k / n, 0)
                for k in range(n, 0, -1)]
    if look.pattern == "checks":
        n = max(3, round(5 * freq))
        return [("r", 3, -1 + (2 * i + 1) / n, -1 + (2 * j + 1) / n, 1 / n, 1 / n, 0)
                for i in range(n) for j in range(n) if (i + j) % 2]
    return []


def _draw(draw: ImageDraw.ImageDraw, parts: list[Part], pose: np.ndarray,
          colours: dict[int, RGB] | RGB | int) -> None:
    """Draw parts through `pose` (2x3 affine, body units to pixels); one colour or per slot."""
    for kind, slot, cx, cy, rx, ry, angle in parts:
        local = (_UNIT[kind] * (rx, ry)) @ _rot(angle).T + (cx, cy)
        world = local @ pose[:, :2].T + pose[:, 2]
        fill = colours[slot] if isinstance(colours, dict) else colours
        draw.polygon([(float(x), float(y)) for x, y in world], fill=fill)


def _pose(rng: np.random.Generator, w: int, h: int, size: tuple[float, float],
          turn: float, stretch: float = 1.0) -> np.ndarray:
    """Affine map from body units to pixels: flip, stretch, rotate, scale, place."""
    scale = min(w, h) * rng.uniform(*size)
    flip = 1.0 if rng.random() < 0.5 else -1.0
    linear = scale * _rot(rng.uniform(-turn, turn)) @ np.diag([flip * stretch, 1.0])
    centre = (rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h)
    return np.column_stack([linear, centre])


def _background(rng: np.random.Generator, w: int, h: int, family: int) -> Image.Image:
    """A muted two-colour gradient plus clutter, so colour alone does not give the label away."""
    scene = _SCENES[rng.integers(len(_SCENES))]
    c1, c2 = (_mix(_colour(rng), scene, rng.uniform(0.5, 0.85)) for _ in range(2))
    a = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(a) * np.arange(w)[None, :] / w + np.sin(a) * np.arange(h)[:, None] / h
    ramp = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6))[..., None]
    start, end = np.array(c1, np.float32), np.array(c2, np.float32)
    canvas = Image.fromarray((start + ramp * (end - start)).astype(np.uint8), "RGB")
    draw, mean_bg, side = ImageDraw.Draw(canvas), _mix(c1, c2, 0.5), min(w, h)
    for _ in range(int(rng.integers(3, 14))):
        kind, colour = rng.integers(4), _mix(_colour(rng), mean_bg, rng.uniform(0.4, 0.8))
        x0, y0, r = rng.uniform(0, w), rng.uniform(0, h), side * rng.uniform(0.03, 0.25)
        if kind == 0:
            draw.line([(x0, y0), (rng.uniform(0, w), rng.uniform(0, h))], fill=colour,
                      width=int(rng.integers(1, max(2, side // 40))))
        elif kind == 1:
            draw.ellipse([x0 - r, y0 - r * rng.uniform(0.4, 1), x0 + r, y0 + r], fill=colour)
        elif kind == 2:
            pts = rng.uniform(-r, r, size=(int(rng.integers(3, 7)), 2)) + np.array([x0, y0])
            draw.polygon([(float(x), float(y)) for x, y in pts], fill=colour)
        else:  # a faint decoy from another family's vocabulary
            other = FAMILIES[(family + 1 + rng.integers(len(FAMILIES) - 1)) % len(FAMILIES)][2]
            _draw(draw, list(other.parts), _pose(rng, w, h, (0.08, 0.2), 180),
                  _mix(mean_bg, other.base, rng.uniform(0.15, 0.35)))
    return canvas


def _paint_animal(canvas: Image.Image, rng: np.random.Generator, look: Look, stretch: float,
                  freq: float) -> None:
    """Paint the patterned body through a mask, then solid accents and details on top."""
    w, h = canvas.size
    pose = _pose(rng, w, h, (0.28, 0.45), look.max_turn, stretch)
    jitter = rng.integers(-20, 21, size=3)
    colours = {slot: _shift(c, jitter) for slot, c in
               enumerate((look.base, look.accent, look.detail, look.ink))}
    # Limbs and segments move a little from image to image, like a pose.
    parts: list[Part] = [(kind, slot, cx, cy, rx * rng.uniform(0.9, 1.1),
                          ry * rng.uniform(0.9, 1.1), angle + rng.normal(0, 7))
                         for kind, slot, cx, cy, rx, ry, angle in look.parts]
    body = [p for p in parts if p[1] == 0]
    layer, mask = Image.new("RGB", (w, h), colours[0]), Image.new("L", (w, h), 0)
    _draw(ImageDraw.Draw(layer), _pattern(look, body, rng, freq), pose, colours)
    _draw(ImageDraw.Draw(mask), body, pose, 255)
    canvas.paste(layer, (0, 0), mask)
    _draw(ImageDraw.Draw(canvas), [p for p in parts if p[1] != 0], pose, colours)


def render_image(row: SampleRow, seed: int) -> Image.Image:
    """Draw one image; it depends only on the row and the seed, never on other images.

    Args:
        row: the planned image.
        seed: the sample seed.

    Returns:
        An RGB image, or mode "L" for grayscale rows.
    """
    rng = _rng(seed, _RENDER, row.family_index, row.image_index)
    w, h = row.width, row.height
    canvas = _background(rng, w, h, row.family_index)
    _paint_animal(canvas, rng, *_species_look(seed, row.family_index, row.species_index))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # occluding twigs
        draw.line([(rng.uniform(0, w), rng.uniform(0, h)), (rng.uniform(0, w), rng.uniform(0, h))],
                  fill=_colour(rng), width=int(rng.integers(1, max(2, min(w, h) // 60))))
    if rng.random() < 0.12:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 2.0))))
    # Sensor-like luminance noise plus a global exposure/white-balance shift.
    pixels = np.asarray(canvas, np.float32) * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    pixels += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(2, 7))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image.convert("L") if row.grayscale else image


def generate_sample(out_dir: Path, spec: SampleSpec = SampleSpec(),
                    progress: bool = False) -> dict:
    """Write the sample (images plus metadata.csv) to `out_dir`, replacing it atomically.

    Args:
        out_dir: destination folder; an existing one is replaced as a whole.
        spec: the sample specification.
        progress: show a tqdm progress bar.

    Returns:
        A summary: images, families, phyla, grayscale count and images per family.
    """
    rows = plan_sample(spec)
    items = rows
    if progress:
        from tqdm import tqdm  # only the pipeline extra installs it

        from rarespecies.core.progress import bar

        items = bar(tqdm, rows, desc="sample", unit="img")
    with atomic_path(out_dir) as tmp:
        for row in items:
            path = tmp / row.file_path
            path.parent.mkdir(parents=True, exist_ok=True)
            render_image(row, spec.seed).save(path, "JPEG", quality=row.quality, subsampling=2,
                                              optimize=False, progressive=False)
        with (tmp / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(row.csv_fields() for row in rows)
    per_family = dict(Counter(row.family for row in rows))
    return {"images": len(rows), "families": len(per_family),
            "phyla": len({row.phylum for row in rows}),
            "grayscale": sum(row.grayscale for row in rows), "per_family": per_family}
