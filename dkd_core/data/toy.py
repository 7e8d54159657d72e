"""A small synthetic CISS benchmark in the VOC layout: textured shapes on clutter.

Class k has a shape (disc, square, triangle, ring, cross, diamond, cycling), a
colour of its own (K evenly spaced saturated hues) and a texture (stripes of a
class-specific orientation and period, or a checkerboard), so classes are
learnable from appearance. Forgetting is real all the same: an incremental step
labels the old classes in its images background.

(Colours used to be shared, a new class reusing an old one's. Then whether the
new class's head took the old class's pixels hinged on the seed and even on the
CPU's float rounding: the last step's all-mIoU of the toy 4-1 task swung by 10 to
18 points. With a colour per class, three seeds agree to within 3 points.)

Every image has a smooth low-saturation background with low-contrast clutter
(blobs and lines, never class shapes) and usually one object (about 80%),
otherwise two (rarely three) objects of different classes; later objects
occlude earlier ones and the labels follow. Like VOC, object boundaries carry a
thin ignore (255) band. All drawing is vectorised numpy over coordinate grids.

The files are written with fixed encoder settings, so one seed always gives
byte-identical files (with the same Pillow build).
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image

from dkd_core.data.layout import DatasetLayout, open_layout
from dkd_core.errors import DKDError

__all__ = ["SHAPES", "make_toy_dataset", "toy_is_current", "voc_palette"]

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
IGNORE = 255
#: Bumped when the same arguments draw other images; written to GENERATOR_FILE so a
#: dataset made by an older generator is recognised (`toy_is_current`).
GENERATOR = "2"  # 2: a colour per class
GENERATOR_FILE = "toy_generator.txt"
_MAX_CLASSES = 254
_JPEG_QUALITY = 95
# Objects per image: 1 (80%), 2 (15%) or 3 (5%) different classes.
_OBJECT_COUNTS = (1, 2, 3)
_OBJECT_PROBS = (0.80, 0.15, 0.05)
_RADIUS_FRACTION = (0.15, 0.27)  # object radius, as a fraction of the image size


def voc_palette() -> np.ndarray:
    """The standard VOC colour map, uint8 [256, 3]: label bits interleaved into R, G, B."""
    labels = np.arange(256)  # [256]
    palette = np.zeros((256, 3), dtype=np.int64)  # [256, 3]
    for bit in range(8):  # 8 bit planes, vectorised over the 256 labels
        for channel in range(3):
            palette[:, channel] |= ((labels >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def _class_names(classes: int) -> list[str]:
    """background, disc, square, ..., diamond, disc_2, square_2, ..."""
    names = ["background"]
    for j in range(classes):
        cycle, shape = divmod(j, len(SHAPES))
        names.append(SHAPES[shape] if cycle == 0 else f"{SHAPES[shape]}_{cycle + 1}")
    return names


def _class_colours(classes: int) -> np.ndarray:
    """float [classes + 1, 3] RGB in [0, 1]; row k is class k's colour (row 0 unused):
    K evenly spaced saturated hues, one per class."""
    colours = np.zeros((classes + 1, 3))
    for k in range(1, classes + 1):
        colours[k] = colorsys.hsv_to_rgb((k - 1) / classes, 0.85, 0.9)
    return colours


def _texture(k: int, xx: np.ndarray, yy: np.ndarray, size: int) -> np.ndarray:
    """Class k's texture in [0, 1] over the grid, float [S, S].

    Two classes in three get stripes (class-specific angle and period), the third a checkerboard.
    """
    j = k - 1
    unit = size / 64  # periods scale with the image
    if j % 3 == 2:
        period = (3 + j % 4) * unit
        return (((xx // period) + (yy // period)) % 2).astype(np.float64)
    angle = math.radians((j * 67) % 180)
    period = (4 + (j * 3) % 5) * unit
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    return 0.5 + 0.5 * np.sin(phase)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """bool [S, S]: the pixels inside `shape` of radius r, given offsets from its centre."""
    if shape == "disc":
        return dx**2 + dy**2 < r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) < 0.85 * r
    if shape == "triangle":  # pointing up (y grows downwards), circumradius 1.1 r
        rt = 1.1 * r
        s3 = math.sqrt(3)
        return (dy < rt / 2) & (s3 * dx - dy < rt) & (-s3 * dx - dy < rt)
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 < r**2) & (d2 > (0.55 * r) ** 2)
    if shape == "cross":
        arm = 0.33 * r
        adx, ady = np.abs(dx), np.abs(dy)
        return ((adx < arm) & (ady < r)) | ((ady < arm) & (adx < r))
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) < 1.15 * r
    raise AssertionError(shape)


def _background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int) -> np.ndarray:
    """float [S, S, 3] in [0, 1]: smooth low-saturation colour noise plus low-contrast clutter."""
    grey = rng.uniform(0.3, 0.7)
    coarse = grey + rng.uniform(-0.15, 0.15, size=(4, 4, 3))  # [4, 4, 3]
    coarse_img = Image.fromarray(np.clip(coarse * 255, 0, 255).astype(np.uint8))
    smooth = np.asarray(coarse_img.resize((size, size), Image.Resampling.BILINEAR)) / 255.0
    image = smooth.astype(np.float64)  # [S, S, 3]
    for _ in range(int(rng.integers(2, 6))):
        colour = rng.uniform(0.2, 0.8, size=3)
        alpha = rng.uniform(0.15, 0.3)
        cx, cy = rng.uniform(0, size, size=2)
        if rng.random() < 0.5:  # an elliptical blob
            ax, ay = rng.uniform(0.05, 0.2, size=2) * size
            mask = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
        else:  # a line through (cx, cy), 1-2 px wide
            theta = rng.uniform(0, math.pi)
            dist = np.abs((xx - cx) * math.sin(theta) - (yy - cy) * math.cos(theta))
            mask = dist < rng.uniform(0.5, 1.0)
        image[mask] = (1 - alpha) * image[mask] + alpha * colour
    return image


def _boundary(label: np.ndarray) -> np.ndarray:
    """bool [S, S]: pixels whose 4-neighbourhood holds a different label."""
    edge = np.zeros(label.shape, dtype=bool)
    vertical = label[1:, :] != label[:-1, :]  # [S-1, S]
    horizontal = label[:, 1:] != label[:, :-1]  # [S, S-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _render(
    rng: np.random.Generator, objects: list[int], size: int, colours: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One image: (RGB uint8 [S, S, 3], label uint8 [S, S]) with `objects` drawn in order."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # [S, S] pixel centres
    image = _background(rng, xx, yy, size)  # [S, S, 3]
    label = np.zeros((size, size), dtype=np.uint8)  # [S, S]
    for k in objects:
        r = rng.uniform(*_RADIUS_FRACTION) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        angle = math.radians(rng.uniform(-15, 15))  # small tilt: squares stay unlike diamonds
        dx = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        dy = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        mask = _shape_mask(SHAPES[(k - 1) % len(SHAPES)], dx, dy, r)  # [S, S]
        colour = np.clip(colours[k] * rng.uniform(0.85, 1.1, size=3), 0, 1)  # per-image jitter
        shading = 0.6 + 0.4 * _texture(k, xx, yy, size)  # [S, S]
        image[mask] = shading[mask, None] * colour  # later objects occlude earlier ones
        label[mask] = k
    image += rng.normal(0, 0.02, size=image.shape)  # sensor noise
    label[_boundary(label)] = IGNORE  # VOC-like ignore band along object boundaries
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), label


def _check_args(classes: int, images: int, size: int, val_fraction: float) -> int:
    """Validate the arguments; returns the number of val images."""
    for name, value, low in (("classes", classes, 1), ("images", images, 2), ("size", size, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DKDError(f"make_toy_dataset: {name} must be an integer >= {low}, got {value!r}")
    if classes > _MAX_CLASSES:
        raise DKDError(f"make_toy_dataset: classes must be <= {_MAX_CLASSES}, got {classes}")
    if not 0 < val_fraction < 1:
        raise DKDError(f"make_toy_dataset: val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = round(val_fraction * images)
    if not 0 < n_val < images:
        raise DKDError(
            f"make_toy_dataset: {images} images with val_fraction {val_fraction} leave an "
            f"empty train or val split ({images - n_val} train, {n_val} val)"
        )
    return n_val


def make_toy_dataset(
    out: Path,
    classes: int = 6,
    images: int = 500,
    size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    overwrite: bool = False,
) -> DatasetLayout:
    """Write the toy benchmark to `out` in the VOC layout and return its layout.

    Files: `JPEGImages/<id>.jpg`, `SegmentationClassAug/<id>.png` (palette PNGs,
    VOC colour map), `ImageSets/Segmentation/{train_aug,val}.txt` and
    `class_names.txt`. Primary classes are balanced: after a seeded shuffle,
    image j of the shuffled order has primary class (j mod K) + 1, and the first
    round(val_fraction * images) of that order form the val split, so both splits
    hold every class about equally often.

    A folder that already holds files is refused unless `overwrite`: runs and
    split manifests may depend on the dataset in it.
    """
    n_val = _check_args(classes, images, size, val_fraction)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DKDError(f"{out}: toy dataset output must be a folder")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise DKDError(
            f"{out} already holds files (runs may depend on the dataset in it): choose an "
            "empty folder, or pass --force to overwrite it"
        )
    image_dir, label_dir = out / "JPEGImages", out / "SegmentationClassAug"
    list_dir = out / "ImageSets" / "Segmentation"
    for folder in (image_dir, label_dir, list_dir):
        folder.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    order = rng.permutation(images)  # [N]
    primary = np.empty(images, dtype=np.int64)  # [N] primary class of each image
    primary[order] = np.arange(images) % classes + 1
    is_val = np.zeros(images, dtype=bool)  # [N]
    is_val[order[:n_val]] = True

    colours = _class_colours(classes)
    palette = voc_palette().tobytes()
    ids = [f"toy_{i:05d}" for i in range(images)]
    for i, image_id in enumerate(ids):
        img_rng = np.random.default_rng([seed, i])  # per image: independent of the others
        count = int(img_rng.choice(_OBJECT_COUNTS, p=_OBJECT_PROBS)) if classes > 1 else 1
        others = img_rng.permutation(np.setdiff1d(np.arange(1, classes + 1), [primary[i]]))
        objects = [int(primary[i]), *(int(k) for k in others[: count - 1])]
        objects = [objects[j] for j in img_rng.permutation(len(objects))]  # drawing order
        rgb, label = _render(img_rng, objects, size, colours)
        Image.fromarray(rgb).save(
            image_dir / f"{image_id}.jpg", quality=_JPEG_QUALITY, optimize=False
        )
        label_img = Image.frombytes("P", (size, size), label.tobytes())
        label_img.putpalette(palette)
        label_img.save(label_dir / f"{image_id}.png", optimize=False)

    train_ids = [i for i, v in zip(ids, is_val, strict=True) if not v]
    val_ids = [i for i, v in zip(ids, is_val, strict=True) if v]
    (list_dir / "train_aug.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (list_dir / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    (out / GENERATOR_FILE).write_text(f"{GENERATOR}\n")
    (out / "class_names.txt").write_text("".join(f"{n}\n" for n in _class_names(classes)))
    return open_layout(out, "voc")


def toy_is_current(root: Path) -> bool:
    """Whether `root` holds a complete toy dataset drawn by this generator
    (class_names.txt is written last)."""
    root = Path(root)
    stamp = root / GENERATOR_FILE
    complete = (root / "class_names.txt").is_file() and stamp.is_file()
    return complete and stamp.read_text().strip() == GENERATOR
