"""Drawing on pictures: detections (boxes, class names, scores), network inputs back to
pixels, enlarging small images, writing figures. No TensorFlow.

`draw_detections` is the one drawing of detections (`bin/paa_predict`); the assignment view
(`assignment`) and the training curves (`curves`) write their figures with `save_figure`.
"""

import math
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours for classes (index modulo the list length).
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
           (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128))


def class_colour(index):
    """RGB tuple of contiguous class `index`."""
    return PALETTE[int(index) % len(PALETTE)]


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def label_font_size(short_side):
    """Label text height in pixels for a picture whose shorter side is `short_side` pixels.

    It grows with the square root of the size: a large photo is looked at scaled down, so
    its labels may take a smaller share of it, while a fixed fraction (1/22 of the shorter
    side: 62 px on a 1371-px photo) hides the neighbouring objects of a busy scene.
    256 px -> 10, 1371 px -> 19, 4000 px -> 32.
    """
    return max(10, round(0.5 * math.sqrt(max(int(short_side), 1))))


def draw_detections(image, boxes, scores, classes, class_names=None, score_threshold=0.0,
                    line_width=None, font_size=None):
    """Draw boxes with "name score" labels on a copy of `image`.

    Args:
      image: uint8 [h, w, 3] RGB (NumPy or PIL image).
      boxes: float [N, 4] yxyx pixels of `image`.
      scores: float [N], or None for boxes without a score (ground truth: the label is
        the name alone); classes: int [N] contiguous (-1 = padding, not drawn).
      class_names: names by contiguous index (default: the index).
      score_threshold: detections scoring below it are not drawn.
      line_width, font_size: pixels; default from the image size (`label_font_size`).
    Returns:
      uint8 [h, w, 3] RGB, the input's size. Lower scores are drawn first, so the best
      detection's label is on top.
    """
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    named_only = scores is None
    scores = np.asarray(np.ones(len(boxes)) if named_only else scores, np.float64).reshape(-1)
    classes = np.asarray(classes).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"draw_detections: boxes {boxes.shape}, scores {scores.shape} and "
                         f"classes {classes.shape} must have the same length")
    short = min(picture.size)
    line_width = line_width or max(1, round(short / 160))
    font = _font(font_size or label_font_size(short))
    draw = ImageDraw.Draw(picture)
    keep = np.flatnonzero((classes >= 0) & (scores >= score_threshold))
    for i in keep[np.argsort(scores[keep], kind="stable")]:
        # Whole pixels, kept on the picture so that a box at the border stays visible.
        ymin, ymax = np.clip(np.round(boxes[i, [0, 2]]), 0, picture.size[1] - 1).astype(int)
        xmin, xmax = np.clip(np.round(boxes[i, [1, 3]]), 0, picture.size[0] - 1).astype(int)
        colour = class_colour(classes[i])
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=line_width)
        name = (class_names[classes[i]] if class_names is not None
                and classes[i] < len(class_names) else str(classes[i]))
        text = name if named_only else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 4, bottom - top + 4
        # Above the box when there is room, else just inside its top edge.
        y0 = ymin - height if ymin - height >= 0 else ymin
        x0 = min(max(xmin, 0), max(picture.size[0] - width, 0))
        draw.rectangle([x0, y0, x0 + width, y0 + height], fill=colour)
        text_colour = (0, 0, 0) if sum(colour) > 400 else (255, 255, 255)
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=text_colour, font=font)
    return np.asarray(picture)


def denormalize(image, pixel_mean, pixel_std):
    """Network input float32 [H, W, 3] ((x - mean) / std) -> uint8 [H, W, 3] RGB."""
    image = np.asarray(image, np.float32) * np.asarray(pixel_std, np.float32)
    return np.clip(np.round(image + np.asarray(pixel_mean, np.float32)), 0, 255).astype(np.uint8)


def save_figure(figure, path, dpi=None):
    """Write a matplotlib `figure` to `path` (PNG/JPEG/PDF/SVG from the extension)."""
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))) or ".", exist_ok=True)
    figure.savefig(os.fspath(path), dpi=dpi)
    return os.fspath(path)


def upscale(image, min_side: Optional[int]):
    """`image` uint8 [h, w, 3] enlarged (bicubic) so its shorter side is >= `min_side`.

    Returns (image, factors) with factors float64 [4] = (sy, sx, sy, sx), to multiply yxyx
    boxes by. No change when `min_side` is falsy or already met.
    """
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    if not min_side or min(height, width) >= min_side:
        return image, np.ones(4)
    factor = float(min_side) / min(height, width)
    size = (round(width * factor), round(height * factor))
    enlarged = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    return enlarged, np.array([size[1] / height, size[0] / width] * 2)


