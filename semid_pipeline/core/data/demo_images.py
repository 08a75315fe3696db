"""Simple product pictures for the demo shop, so the image stages (captions, image embeddings) have input.

Each item gets a small PNG: a product silhouette on a white background. The colour follows the
item's level-1 category and the silhouette its level-2 category (bottle, jar, tube, compact), with a
small per-item shade and size jitter from a generator seeded separately from the dataset's, so turning
images on never changes the catalog or the interactions. Files are named by item id and rewritten only
when missing, so re-generating the demo is cheap.
"""

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

# level-1 colour (name, RGB); the stand-in vision server names the same colours
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (200, 40, 40)),
    ("blue", (40, 70, 200)),
    ("green", (40, 160, 60)),
    ("purple", (130, 50, 170)),
    ("orange", (235, 140, 30)),
    ("pink", (235, 120, 180)),
    ("teal", (30, 150, 150)),
    ("brown", (130, 80, 40)),
)
SHAPES = ("bottle", "jar", "tube", "compact")


def _shade(rgb: tuple[int, int, int], u: float) -> tuple[int, int, int]:
    f = 0.85 + 0.3 * u
    return tuple(int(min(255, max(0, round(c * f)))) for c in rgb)  # type: ignore[return-value]


def draw_product(colour: tuple[int, int, int], shape: str, size: int = 64, scale: float = 1.0) -> "object":
    """One PIL image of a ``shape`` silhouette in ``colour`` on white."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    c = size / 2
    s = size * 0.4 * scale
    if shape == "bottle":
        d.rectangle([c - s * 0.35, c - s * 0.6, c + s * 0.35, c + s], fill=colour)
        d.rectangle([c - s * 0.12, c - s, c + s * 0.12, c - s * 0.6], fill=colour)
    elif shape == "jar":
        d.rectangle([c - s * 0.8, c - s * 0.5, c + s * 0.8, c + s * 0.7], fill=colour)
        d.rectangle([c - s * 0.85, c - s * 0.75, c + s * 0.85, c - s * 0.5], fill=(90, 90, 90))
    elif shape == "tube":
        d.rectangle([c - s, c - s * 0.25, c + s * 0.7, c + s * 0.25], fill=colour)
        d.rectangle([c + s * 0.7, c - s * 0.12, c + s, c + s * 0.12], fill=(90, 90, 90))
    else:  # compact
        d.ellipse([c - s * 0.8, c - s * 0.8, c + s * 0.8, c + s * 0.8], fill=colour)
    return img


def draw_demo_images(
    item_ids: Sequence[str], paths: Sequence[Sequence[str]], image_dir: str, seed: int, size: int = 64
) -> list[str]:
    """Writes ``<image_dir>/<item_id>.png`` per item (``paths`` are the category paths) and returns the paths."""
    out_dir = Path(image_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    level1 = sorted({p[0] for p in paths if len(p)})
    level2 = sorted({tuple(p[:2]) for p in paths if len(p) > 1})
    rng = np.random.default_rng([seed, zlib.crc32(b"demo-images")])
    jitter = rng.random((len(item_ids), 2))
    files = []
    for i, (item_id, path) in enumerate(zip(item_ids, paths)):
        name, rgb = PALETTE[level1.index(path[0]) % len(PALETTE)] if len(path) else PALETTE[0]
        shape = SHAPES[level2.index(tuple(path[:2])) % len(SHAPES)] if len(path) > 1 else SHAPES[0]
        target = out_dir / f"{item_id}.png"
        if not target.exists():
            img = draw_product(_shade(rgb, float(jitter[i, 0])), shape, size, 0.8 + 0.4 * float(jitter[i, 1]))
            tmp = target.with_name(f".{target.name}.tmp")
            img.save(tmp, format="PNG")
            tmp.replace(target)
        files.append(str(target))
    return files
