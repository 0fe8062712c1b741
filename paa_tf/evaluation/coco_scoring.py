"""COCO scoring with pycocotools: detections -> COCO results JSON -> `COCOeval` (bbox).

Detections arrive as the padded dict of `paa_tf.inference.postprocess.postprocess` (boxes yxyx in
original-image pixels, contiguous classes, -1 pads); this module turns them into COCO
results (`[x, y, w, h]`, original image ids, the dataset's own category ids via a label map
{contiguous index -> dataset id}), runs pycocotools, and writes `results.json` and
`metrics.json`. It imports no TensorFlow: scoring a results file stays light. Running a
model over a dataset is `paa_tf.evaluation.evaluate`.
"""

import contextlib
import io
import json
import math
import os
from typing import Callable, Dict, Iterable, List

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The 12 numbers of `COCOeval.stats`, in order, under their usual names.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_coco(annotations, quiet=True):
    """A pycocotools `COCO` from an instances JSON path (or return a `COCO` unchanged)."""
    if isinstance(annotations, COCO):
        return annotations
    path = os.fspath(annotations)
    if not os.path.isfile(path):
        raise ValueError(f"COCO annotations file not found: {path!r}; pass the instances JSON, "
                         "e.g. data/coco/annotations/instances_val2017.json")
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return COCO(path)


def coco_label_map(coco):
    """{contiguous index -> COCO category id}, the ids sorted ascending (1..90 -> 0..79)."""
    return {index: int(cat_id) for index, cat_id in enumerate(sorted(coco.getCatIds()))}


def _image_id(value):
    """An image id from a `source_id` (int, numeric bytes/str, or a 0-d array)."""
    value = np.asarray(value).item() if not isinstance(value, (bytes, str)) else value
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"image id {value!r} is not an integer COCO image id; the dataset's "
                         "source_id must carry the original COCO id") from None


def _id_map(label_map):
    """{contiguous index -> dataset id} from a dict or a `paa_tf.data.label_map.LabelMap`."""
    if hasattr(label_map, "ids"):
        return {index: int(cat_id) for index, cat_id in enumerate(label_map.ids)}
    return {int(k): int(v) for k, v in label_map.items()}


def detections_to_coco(detections, image_ids, label_map, plus_one=False):
    """COCO results records from a batch of padded detections.

    Args:
      detections: dict of arrays: `detection_boxes` [B, D, 4] yxyx original pixels,
        `detection_scores` [B, D], `detection_classes` [B, D] contiguous (-1 pads),
        `num_detections` [B].
      image_ids: [B] original image ids.
      label_map: {contiguous index -> dataset category id} (or a `LabelMap`).
      plus_one: KK's "+1" convention, width = xmax - xmin + 1 (docs/CONVENTIONS.md, "Pixels").
    Returns:
      list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.
    """
    boxes = np.asarray(detections["detection_boxes"], np.float64)
    scores = np.asarray(detections["detection_scores"], np.float64)
    classes = np.asarray(detections["detection_classes"]).astype(np.int64)
    counts = np.asarray(detections["num_detections"]).astype(np.int64).reshape(-1)
    one = 1.0 if plus_one else 0.0
    label_map = _id_map(label_map)
    records = []
    for b, image_id in enumerate(image_ids):
        image_id = _image_id(image_id)
        for d in range(int(counts[b])):
            label = int(classes[b, d])
            if label < 0:
                continue
            if label not in label_map:
                raise ValueError(f"detection class {label} of image {image_id} is not in the "
                                 f"label map (classes 0..{len(label_map) - 1}); does the model's "
                                 "num_classes match the dataset?")
            ymin, xmin, ymax, xmax = boxes[b, d]
            records.append({
                "image_id": image_id,
                "category_id": int(label_map[label]),
                "bbox": [round(float(xmin), 3), round(float(ymin), 3),
                         round(float(xmax - xmin + one), 3), round(float(ymax - ymin + one), 3)],
                "score": round(float(scores[b, d]), 5),
            })
    return records


def gt_as_detections(coco, exclude_crowd=True):
    """The ground truth itself as COCO results (score 1): a perfect detector, AP = 1."""
    records = []
    for ann in coco.dataset["annotations"]:
        if exclude_crowd and ann.get("iscrowd", 0):
            continue
        records.append({"image_id": int(ann["image_id"]), "category_id": int(ann["category_id"]),
                        "bbox": [float(v) for v in ann["bbox"]], "score": 1.0})
    return records


def write_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def load_results(path):
    """COCO results records from a JSON file, with a clear error for a wrong layout."""
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list) or any(
            not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r)
            for r in records):
        raise ValueError(f"{path}: a COCO results file is a JSON list of records with "
                         "image_id, category_id, bbox [x, y, w, h] and score")
    return records


def _per_category_ap(coco_eval, coco_gt):
    """{category name: AP over IoU .5:.95, all areas, 100 dets}; None without GT."""
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = coco_gt.cats[cat_id]["name"]
        out[name] = float(np.mean(values)) if values.size else None
    return out


def coco_evaluate(coco_gt, results, output_dir=None, image_ids=None, verbose=True):
    """Run pycocotools `COCOeval` (bbox) on `results`; write results.json and metrics.json.

    Args:
      coco_gt: `COCO` or path of the instances JSON.
      results: list of COCO results records (see `detections_to_coco`).
      output_dir: where to write `results.json` and `metrics.json` (None: nothing written).
      image_ids: evaluate only these images (e.g. a partial pass); default all GT images.
    Returns:
      dict with the 12 `METRIC_NAMES` (floats), `per_category_AP` {name: AP or None},
      `num_images`, `num_detections`.
    """
    coco_gt = load_coco(coco_gt)
    results = [dict(r) for r in results]  # pycocotools' loadRes adds keys to the records
    if output_dir:
        write_json(results, os.path.join(output_dir, "results.json"))
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(set(image_ids))
    if results:
        unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
        if unknown:
            raise ValueError(f"results name {len(unknown)} image ids absent from the ground "
                             f"truth, e.g. {sorted(unknown)[:5]}; evaluate against the "
                             "annotations the images came from")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(results)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()) as log:
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        if verbose:
            print(_summary_lines(log.getvalue()))
        stats = [float(v) for v in coco_eval.stats]
        per_category = _per_category_ap(coco_eval, coco_gt)
    else:
        # pycocotools cannot load an empty results list; nothing detected scores 0.
        stats = [0.0] * len(METRIC_NAMES)
        per_category = {coco_gt.cats[c]["name"]: 0.0 for c in sorted(coco_gt.getCatIds())}
    metrics = dict(zip(METRIC_NAMES, stats))
    metrics["per_category_AP"] = per_category
    metrics["num_images"] = len(ids)
    metrics["num_detections"] = len(results)
    if verbose:
        print(format_metrics(metrics))
    if output_dir:
        write_json(_json_safe(metrics), os.path.join(output_dir, "metrics.json"))
    return metrics


def _summary_lines(log):
    """The 12 'Average Precision/Recall' lines of `COCOeval.summarize`."""
    return "\n".join(line for line in log.splitlines() if line.lstrip().startswith("Average"))


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj


def format_metrics(metrics):
    """The 12 COCO numbers by name, then per-category AP, as printable text."""
    lines = [f"{name:>6}: {metrics[name]:.4f}" for name in METRIC_NAMES]
    per_category = metrics.get("per_category_AP") or {}
    if per_category:
        lines.append("per-category AP:")
        lines.extend(f"  {name:<16} {'n/a' if ap is None else f'{ap:.4f}'}"
                     for name, ap in per_category.items())
    return "\n".join(lines)


def run_detection_loop(dataset: Iterable[dict], predict_fn: Callable[[dict], Dict],
                       label_map, image_id_key="source_id", max_batches=None,
                       plus_one=False, log_every=0, on_batch=None):
    """Run `predict_fn` over `dataset` and collect COCO results records.

    Args:
      dataset: iterable of batch dicts (e.g. a `tf.data.Dataset`) carrying `image_id_key`
        ([B] original image ids) and whatever `predict_fn` reads.
      predict_fn: batch -> detections dict (see `detections_to_coco`), boxes in original
        image pixels.
      label_map: {contiguous index -> dataset category id}.
      on_batch: optional `(batch, image_ids, records)` called after each batch with that
        batch's COCO results records, the very objects that are returned (and scored).
    Returns:
      (records, image_ids) lists.
    """
    records: List[dict] = []
    image_ids: List[int] = []
    for step, batch in enumerate(dataset):
        if max_batches is not None and step >= max_batches:
            break
        if image_id_key not in batch:
            raise ValueError(f"evaluation batch has no {image_id_key!r} key (keys: "
                             f"{sorted(batch)}); the dataset must carry the original image ids")
        ids = [_image_id(v) for v in np.asarray(batch[image_id_key]).reshape(-1)]
        detections = {k: np.asarray(v) for k, v in predict_fn(batch).items()}
        batch_records = detections_to_coco(detections, ids, label_map, plus_one=plus_one)
        if on_batch is not None:
            on_batch(batch, ids, batch_records)
        records.extend(batch_records)
        image_ids.extend(ids)
        if log_every and (step + 1) % log_every == 0:
            print(f"evaluated {len(image_ids)} images, {len(records)} detections", flush=True)
    return records, image_ids


def evaluate_dataset(dataset, predict_fn, coco_gt, label_map=None, output_dir=None,
                     image_id_key="source_id", max_batches=None, plus_one=False,
                     verbose=True, observer=None) -> dict:
    """Detections of `predict_fn` over `dataset`, scored by pycocotools on the seen images.

    `label_map` defaults to `coco_label_map(coco_gt)`. `observer` (e.g.
    `paa_tf.visualization.summaries.EvalImages`) sees the evaluation as it runs:
    `observer.begin(coco_gt, label_map)` once ({contiguous index -> dataset id}), then
    `observer.batch(batch, image_ids, records)` after each batch (`run_detection_loop`'s
    `on_batch`). Returns `coco_evaluate`'s metrics.
    """
    coco_gt = load_coco(coco_gt)
    label_map = coco_label_map(coco_gt) if label_map is None else _id_map(label_map)
    if observer is not None:
        observer.begin(coco_gt, label_map)
    records, image_ids = run_detection_loop(
        dataset, predict_fn, label_map, image_id_key, max_batches, plus_one,
        on_batch=None if observer is None else observer.batch)
    if not image_ids:
        raise ValueError("evaluation dataset yielded no batches")
    return coco_evaluate(coco_gt, records, output_dir=output_dir, image_ids=image_ids,
                         verbose=verbose)


def coco_from_dict(content):
    """A pycocotools `COCO` built from an in-memory instances dict."""
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
