"""A generated, seeded shapes detection dataset in COCO layout.

The built-in default data for the quickstart and the tests: no download, learnable by a small
model on a CPU in minutes, yet with the properties that separate PAA from IoU-threshold
assignment (tiny objects, varied aspect ratios, partial overlap, textured backgrounds).

Layout written under ``output_dir``::

    train/train_000001.jpg ...        val/val_000001.jpg ...
    annotations/instances_train.json  annotations/instances_val.json
    manifest.json                     (parameters and counts; written last)

The class of an object is decided by its shape only (colour is random). Category ids are
deliberately non-contiguous (1, 3, 5, ...) so that the label-map path is exercised.
Boxes are the tight box of the *visible* pixels of each drawn shape, COCO ``[x, y, w, h]``
float pixels, with pixel (row r, column c) covering ``[c, c+1) x [r, r+1)``. ``area`` is the
visible pixel count (the segmentation area, as in COCO).

Determinism: image ``i`` of a split is rendered from ``numpy.random.default_rng([seed,
split_code, i])`` alone, so the same seed gives byte-identical JSON and identical pixels.
"""

import dataclasses
import json
import math
import os
import re

import numpy as np
from PIL import Image, ImageDraw

SHAPE_NAMES = ("ellipse", "rectangle", "triangle", "ring", "cross", "star")
NUM_SHAPES = len(SHAPE_NAMES)
# Bump when the rendering changes, so that a cached dataset is regenerated.
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
MAX_OBJECTS = 8
MAX_PAIR_IOU = 0.3          # between the boxes (and frames) of two objects of one image
MIN_VISIBLE_FRACTION = 0.6  # of an object's own pixels left after later objects cover it
MIN_COLOUR_DISTANCE = 90.0  # RGB distance to what lies underneath, so no object is invisible
_SPLIT_CODES = {"train": 0, "val": 1}
_FILE_RE = re.compile(r"^(train|val)_\d{6}\.jpg$")


def category_id(class_index):
    """COCO category id of contiguous class ``class_index``: 1, 3, 5, ... (non-contiguous)."""
    return 2 * int(class_index) + 1


def categories(num_classes):
    """COCO ``categories`` list for the first ``num_classes`` shapes."""
    _check_num_classes(num_classes)
    return [{"id": category_id(i), "name": SHAPE_NAMES[i], "supercategory": "shape"}
            for i in range(num_classes)]


def _check_num_classes(num_classes):
    if not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes={num_classes} is out of range: the shapes dataset has "
                         f"1..{NUM_SHAPES} classes {SHAPE_NAMES}; pass a value in that range.")


@dataclasses.dataclass
class RenderedObject:
    """One drawn object. Masks are bool ``[H, W]``; ``frame`` is the integer pixel rectangle
    ``(x0, y0, x1, y1)`` (exclusive x1, y1) the shape was fitted into."""
    class_index: int
    frame: tuple
    mask: np.ndarray
    visible_mask: np.ndarray = None

    def box_xywh(self):
        """Tight COCO ``[x, y, w, h]`` float box of the visible pixels."""
        x0, y0, x1, y1 = _mask_box(self.visible_mask)
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


@dataclasses.dataclass
class RenderedImage:
    """``image``, ``background``: uint8 ``[H, W, 3]``; objects in drawing order (later on top)."""
    image: np.ndarray
    background: np.ndarray
    objects: list


# ----------------------------------------------------------------------------- shapes

def shape_mask(shape, frame, image_size, rng):
    """Rasterises one shape into its frame; returns a bool ``[image_size, image_size]`` mask.

    ``rng`` draws the shape's free parameters (triangle apex, ring and cross thickness, star
    rotation), so a mask is a pure function of its arguments and the generator state.
    """
    x0, y0, x1, y1 = frame
    # PIL coordinates name pixel centres of the first and last covered pixels.
    xa, ya, xb, yb = x0, y0, x1 - 1, y1 - 1
    w, h = x1 - x0, y1 - y0
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "ellipse":
        draw.ellipse([xa, ya, xb, yb], fill=255)
    elif shape == "rectangle":
        draw.rectangle([xa, ya, xb, yb], fill=255)
    elif shape == "ring":
        draw.ellipse([xa, ya, xb, yb], fill=255)
        t = rng.uniform(0.18, 0.3)
        dx, dy = t * w, t * h
        if w - 2 * dx >= 3 and h - 2 * dy >= 3:
            draw.ellipse([xa + dx, ya + dy, xb - dx, yb - dy], fill=0)
    elif shape == "triangle":
        side = int(rng.integers(4))
        a = rng.uniform(0.0, 1.0)
        if side == 0:    # apex up
            pts = [(xa, yb), (xb, yb), (xa + a * (xb - xa), ya)]
        elif side == 1:  # apex down
            pts = [(xa, ya), (xb, ya), (xa + a * (xb - xa), yb)]
        elif side == 2:  # apex left
            pts = [(xb, ya), (xb, yb), (xa, ya + a * (yb - ya))]
        else:            # apex right
            pts = [(xa, ya), (xa, yb), (xb, ya + a * (yb - ya))]
        draw.polygon(pts, fill=255)
    elif shape == "cross":
        tx, ty = rng.uniform(0.25, 0.42) * w, rng.uniform(0.25, 0.42) * h
        cx, cy = (xa + xb) / 2.0, (ya + yb) / 2.0
        draw.rectangle([round(cx - tx / 2), ya, round(cx + tx / 2), yb], fill=255)
        draw.rectangle([xa, round(cy - ty / 2), xb, round(cy + ty / 2)], fill=255)
    elif shape == "star":
        inner = rng.uniform(0.38, 0.5)
        start = rng.uniform(0.0, 2.0 * math.pi)
        cx, cy, rx, ry = (xa + xb) / 2.0, (ya + yb) / 2.0, (xb - xa) / 2.0, (yb - ya) / 2.0
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else inner
            ang = start + k * math.pi / 5.0
            pts.append((cx + r * rx * math.cos(ang), cy + r * ry * math.sin(ang)))
        draw.polygon(pts, fill=255)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPE_NAMES}.")
    return np.asarray(canvas) > 0


def _sample_frame(shape, image_size, rng):
    """Integer frame ``(x0, y0, x1, y1)``: sizes mostly 20-120 px at 256, ~10% tiny (10-20 px),
    ~10% large (120-200 px), aspect ratio w/h log-uniform in [0.5, 2] (stars nearly square)."""
    scale = image_size / 256.0
    u = rng.uniform()
    if u < 0.12:
        size = rng.uniform(10.0, 20.0)
    elif u < 0.9:
        size = math.exp(rng.uniform(math.log(20.0), math.log(120.0)))
    else:
        size = rng.uniform(120.0, 200.0)
    size *= scale
    log_ar = math.log(1.25) if shape == "star" else math.log(2.0)
    ratio = math.exp(rng.uniform(-log_ar, log_ar))
    limit = image_size - 2
    w = int(round(min(max(size * math.sqrt(ratio), 6.0), limit)))
    h = int(round(min(max(size / math.sqrt(ratio), 6.0), limit)))
    x0 = int(rng.integers(0, image_size - w + 1))
    y0 = int(rng.integers(0, image_size - h + 1))
    return (x0, y0, x0 + w, y0 + h)


def _mask_box(mask):
    """Tight ``(x0, y0, x1, y1)`` (exclusive ends) of a non-empty bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _frame_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# ----------------------------------------------------------------------------- pixels

def _background(image_size, rng):
    """Textured uint8 ``[H, W, 3]``: a gradient, stripes, smooth blobs or a checkerboard,
    plus pixel noise and a few thin distractor lines, so it cannot be thresholded away."""
    n = image_size
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    ang = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(ang) + yy * math.sin(ang)
    kind = int(rng.integers(4))
    if kind == 0:
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    elif kind == 1:
        period = rng.uniform(0.04, 0.25)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * proj / period)
        if rng.uniform() < 0.5:
            t = (t > 0.5).astype(np.float32)
    elif kind == 2:
        cells = int(rng.integers(3, 9))
        low = Image.fromarray((rng.uniform(0, 255, (cells, cells))).astype(np.uint8))
        t = np.asarray(low.resize((n, n), Image.Resampling.BICUBIC), np.float32) / 255.0
    else:
        # A checkerboard turned 15-75 degrees: axis-aligned cells would look like rectangles.
        turn = math.radians(rng.uniform(15.0, 75.0))
        u = xx * math.cos(turn) + yy * math.sin(turn)
        v = yy * math.cos(turn) - xx * math.sin(turn)
        cell = rng.uniform(0.03, 0.08)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    img = c1 + (c2 - c1) * t[..., None]
    img = img + rng.normal(0.0, rng.uniform(3.0, 12.0), img.shape)
    bg = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(0, 4))):
        pts = [tuple(float(v) for v in rng.uniform(0, n, 2)) for _ in range(2)]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(pts, fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(bg).copy()


def _pick_colour(under, rng):
    """A random colour at least ``MIN_COLOUR_DISTANCE`` from every colour in ``under``
    (float ``[K, 3]``); the farthest of a few tries when none is."""
    best, best_dist = None, -1.0
    for _ in range(16):
        colour = rng.uniform(0, 255, 3)
        dist = float(np.min(np.linalg.norm(under - colour, axis=1)))
        if dist >= MIN_COLOUR_DISTANCE:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def render_image(rng, image_size=256, num_classes=NUM_SHAPES):
    """Renders one image and its objects from generator ``rng`` (uncompressed).

    Returns a ``RenderedImage``; every object has a non-empty ``visible_mask`` holding at
    least ``MIN_VISIBLE_FRACTION`` of its pixels, and the pairwise IoU of both the frames and
    the final tight boxes is <= ``MAX_PAIR_IOU``.
    """
    _check_num_classes(num_classes)
    background = _background(image_size, rng)
    image = background.astype(np.float32)
    objects, colours = [], []
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    target = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(target):
        class_index = int(rng.integers(num_classes))
        shape = SHAPE_NAMES[class_index]
        for _attempt in range(25):
            frame = _sample_frame(shape, image_size, rng)
            if any(_frame_iou(frame, o.frame) > MAX_PAIR_IOU for o in objects):
                continue
            mask = shape_mask(shape, frame, image_size, rng)
            if mask.sum() < 12:
                continue
            visible = [o.visible_mask & ~mask for o in objects]
            if any(v.sum() < MIN_VISIBLE_FRACTION * o.mask.sum()
                   for v, o in zip(visible, objects)):
                continue
            # Occlusion shrinks boxes, so the cap is checked again on the final tight boxes.
            boxes = [_mask_box(v) for v in visible] + [_mask_box(mask)]
            if all(_frame_iou(a, b) <= MAX_PAIR_IOU
                   for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                break
        else:
            continue  # no room for this object in this image
        under = [background[mask].astype(np.float32).mean(axis=0)]
        under += [c for o, c in zip(objects, colours) if (o.visible_mask & mask).any()]
        colour = _pick_colour(np.stack(under), rng)
        # A gentle linear shading keeps objects from being perfectly flat patches.
        ang = rng.uniform(0, 2 * math.pi)
        amp = rng.uniform(0.0, 25.0) / max(frame[2] - frame[0], frame[3] - frame[1])
        shade = ((xx - frame[0]) * math.cos(ang) + (yy - frame[1]) * math.sin(ang)) * amp
        image[mask] = colour[None, :] + shade[mask][:, None]
        for o in objects:
            o.visible_mask &= ~mask
        objects.append(RenderedObject(class_index, frame, mask, mask.copy()))
        colours.append(colour)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return RenderedImage(image=image, background=background, objects=objects)


def image_rng(seed, split, index):
    """The generator that alone decides image ``index`` (0-based) of ``split``."""
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


# ----------------------------------------------------------------------------- dataset files

def _write_split(output_dir, split, num_images, image_size, seed, num_classes):
    image_dir = os.path.join(output_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    for name in os.listdir(image_dir):  # stale images of an earlier, larger generation
        if _FILE_RE.match(name):
            os.remove(os.path.join(image_dir, name))
    images, annotations = [], []
    for index in range(num_images):
        rendered = render_image(image_rng(seed, split, index), image_size, num_classes)
        image_id = index + 1
        file_name = f"{split}_{image_id:06d}.jpg"
        Image.fromarray(rendered.image).save(os.path.join(image_dir, file_name), format="JPEG",
                                             quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name,
                       "width": image_size, "height": image_size})
        for obj in rendered.objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": category_id(obj.class_index), "bbox": obj.box_xywh(),
                "area": float(obj.visible_mask.sum()), "iscrowd": 0})
    dataset = {
        "info": {"description": f"paa_tf generated shapes ({split})",
                 "version": str(GENERATOR_VERSION), "year": 2020},
        "licenses": [],
        "images": images, "annotations": annotations, "categories": categories(num_classes)}
    ann_path = os.path.join(output_dir, "annotations", f"instances_{split}.json")
    _write_json(ann_path, dataset)
    return len(images), len(annotations)


def _write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"), sort_keys=True)
    os.replace(tmp, path)


def dataset_paths(output_dir):
    """Paths of a shapes dataset under ``output_dir`` (whether or not it exists yet)."""
    root = os.path.abspath(output_dir)
    return {
        "output_dir": root,
        "train_image_dir": os.path.join(root, "train"),
        "val_image_dir": os.path.join(root, "val"),
        "train_annotation_file": os.path.join(root, "annotations", "instances_train.json"),
        "val_annotation_file": os.path.join(root, "annotations", "instances_val.json"),
        "manifest": os.path.join(root, "manifest.json"),
    }


def _is_complete(paths, params):
    try:
        with open(paths["manifest"], encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if manifest.get("parameters") != params:
        return False
    for split in ("train", "val"):
        if not os.path.isfile(paths[f"{split}_annotation_file"]):
            return False
        for index in range(params[f"num_{split}"]):
            name = f"{split}_{index + 1:06d}.jpg"
            if not os.path.isfile(os.path.join(paths[f"{split}_image_dir"], name)):
                return False
    return True


def make_shapes_dataset(output_dir, num_train=2000, num_val=200, image_size=256, seed=0,
                        num_classes=NUM_SHAPES, overwrite=False):
    """Writes the shapes dataset under ``output_dir`` unless an identical one is there.

    Args:
      output_dir: folder to create or reuse.
      num_train, num_val: image counts (>= 0; ``num_train`` >= 1).
      image_size: square image side in pixels (>= 64); object sizes scale with it.
      seed: integer seed; the same seed gives identical files.
      num_classes: how many of ``SHAPE_NAMES`` to use (1..6).
      overwrite: regenerate even when the manifest matches.

    Returns:
      ``dataset_paths(output_dir)`` plus ``generated`` (bool: False when the cached dataset
      was reused) and ``counts`` (images and annotations per split).
    """
    if int(num_train) < 1 or int(num_val) < 0:
        raise ValueError(f"num_train={num_train}, num_val={num_val}: need num_train >= 1 and "
                         "num_val >= 0.")
    if int(image_size) < 64:
        raise ValueError(f"image_size={image_size} is too small for the shapes dataset; "
                         "use 64 or more (256 is the quickstart size).")
    _check_num_classes(int(num_classes))
    params = {"generator_version": GENERATOR_VERSION, "num_train": int(num_train),
              "num_val": int(num_val), "image_size": int(image_size), "seed": int(seed),
              "num_classes": int(num_classes)}
    paths = dataset_paths(output_dir)
    if not overwrite and _is_complete(paths, params):
        with open(paths["manifest"], encoding="utf-8") as f:
            counts = json.load(f)["counts"]
        return dict(paths, generated=False, counts=counts)
    if os.path.exists(paths["manifest"]):
        os.remove(paths["manifest"])  # an interrupted run must not look complete
    counts = {}
    for split in ("train", "val"):
        n_img, n_ann = _write_split(paths["output_dir"], split, params[f"num_{split}"],
                                    params["image_size"], params["seed"], params["num_classes"])
        counts[f"{split}_images"], counts[f"{split}_annotations"] = n_img, n_ann
    _write_json(paths["manifest"], {"parameters": params, "counts": counts})
    return dict(paths, generated=True, counts=counts)
