"""Detections and pictures for image files, from a training run (`bin/paa_predict`).

`Predictor` restores a run folder (`paa_tf.run_folder.RunFolder`) and runs, on each image
alone, the inference pre-processing that evaluation and the export use
(`paa_tf.data.inference_preprocess`: resize to `data.eval_shorter_side`, longer side <=
`data.max_size`, pad to the image's own multiple of 32 with `data.buckets: orientation`, to
`data.image_size` with `square`), the network and the full post-processing (candidates, NMS,
score voting) of `eval.*`: its detections are the exported SavedModel's. `run_prediction` writes
`detections.json` and one picture per image (the format is described in
paa_tf/cli/predict.py).
"""

import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from paa_tf.data import transforms
from paa_tf.data.inference_preprocess import InferencePreprocess
from paa_tf.inference import detection, postprocess
from paa_tf.modeling.restore import restore_run
from paa_tf.run_folder import RunFolder
from paa_tf.visualization import drawing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def collect_images(paths):
    """Image files named by `paths` (files, or folders scanned one level), in order, without
    duplicates. Raises ValueError for a path that does not exist or a folder without images."""
    files, seen = [], set()
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(os.path.join(path, name) for name in os.listdir(path)
                           if name.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(path, name)))
            if not found:
                raise ValueError(f"folder {path} holds no image files "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(path):
            found = [path]
        else:
            raise ValueError(f"--images: {path} is neither a file nor a folder")
        for name in found:
            key = os.path.realpath(name)
            if key not in seen:
                seen.add(key)
                files.append(name)
    if not files:
        raise ValueError("no images given: pass --images FILE_OR_FOLDER [more ...]")
    return files


def picture_names(files, output_dir, extension):
    """One output path per input file, `<stem>.<extension>`, made unique (`<stem>_2...`) and
    never equal to an input file."""
    inputs = {os.path.realpath(f) for f in files}
    used, names = set(), []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        candidate, counter = stem, 1
        while True:
            target = os.path.join(output_dir, f"{candidate}.{extension}")
            if target not in used and os.path.realpath(target) not in inputs:
                break
            counter += 1
            candidate = f"{stem}_{counter}"
        used.add(target)
        names.append(target)
    return names


class Predictor:
    """A restored training run: the inference pre-processing, the network and the
    post-processing, one image at a time (as the export runs a request's images).

    `predict(images)` takes uint8 [h, w, 3] arrays (sizes may differ) and returns one
    detections dict per image with NumPy `boxes` float32 [D, 4] yxyx original pixels,
    `scores` float32 [D], `classes` int32 [D] contiguous, sorted by descending score, padding
    removed (before any display threshold).
    """

    def __init__(self, model_dir, checkpoint=None, overrides=None):
        run = RunFolder(model_dir)
        self.config = run.config(overrides)
        self.label_map = run.label_map()
        self.image_size = tuple(int(s) for s in self.config.data.image_size)
        # The newest readable checkpoint unless one is named, as training resumes.
        self.model, self.checkpoint = restore_run(run, self.config, self.image_size, checkpoint)
        preprocess = InferencePreprocess.from_config(self.config)
        params = postprocess.PostprocessParams.from_config(self.config)

        # One image at a time, padded as evaluation and the export pad it (its own multiple
        # of 32 with orientation buckets), and one trace for every size: the export's graph.
        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def detect(image):
            padded, image_info = preprocess(image)
            return detection.detect(self.model, padded[None], image_info[None], params)

        self._detect = detect

    def predict(self, images):
        results = []
        for image in images:
            out = {k: np.asarray(v)[0] for k, v in self._detect(image).items()}
            count = int(out["num_detections"])
            keep = np.flatnonzero(out["detection_classes"][:count] >= 0)
            order = keep[np.argsort(-out["detection_scores"][keep], kind="stable")]
            results.append({"boxes": out["detection_boxes"][order].astype(np.float32),
                            "scores": out["detection_scores"][order].astype(np.float32),
                            "classes": out["detection_classes"][order].astype(np.int32)})
        return results


def read_image(path):
    """uint8 [h, w, 3] RGB pixels of an image file (TensorFlow's decoder, as in training).

    Raises ValueError naming the file when it cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            encoded = f.read()
        return transforms.decode_image(tf.constant(encoded)).numpy()
    except (OSError, tf.errors.OpError) as error:
        message = getattr(error, "message", None) or str(error)
        raise ValueError(f"cannot read image {path}: {message.strip().splitlines()[0]}; "
                         "give a JPEG, PNG, BMP, GIF or WebP file, or pass --skip_bad_images"
                         ) from None


def detection_records(detections, label_map, score_threshold, plus_one=False):
    """JSON records of one image's detections scoring >= `score_threshold`."""
    one = 1.0 if plus_one else 0.0
    records = []
    for box, score, label in zip(detections["boxes"], detections["scores"],
                                 detections["classes"]):
        if score < score_threshold:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        records.append({
            "bbox": [round(xmin, 3), round(ymin, 3), round(xmax - xmin + one, 3),
                     round(ymax - ymin + one, 3)],
            "box": [round(ymin, 3), round(xmin, 3), round(ymax, 3), round(xmax, 3)],
            "score": round(float(score), 5),
            "class_index": int(label),
            "category_id": int(label_map.ids[label]),
            "class_name": str(label_map.names[label]),
        })
    return records


def run_prediction(model_dir, image_paths, output_dir, checkpoint=None, score_threshold=0.3,
                   picture_format="png", skip_bad_images=False, min_picture_side=0,
                   label_size=None, overrides=None, log=print):
    """Detections and pictures for `image_paths` (files or folders); see the module docstring.

    Returns the dict written to `output_dir/detections.json`.
    """
    files = collect_images(image_paths)
    predictor = Predictor(model_dir, checkpoint, overrides)
    log(f"restored {predictor.checkpoint}; {len(files)} images")
    batch_size = int(predictor.config.eval.batch_size)
    os.makedirs(output_dir, exist_ok=True)
    pictures = picture_names(files, output_dir, picture_format)
    label_map = predictor.label_map
    plus_one = bool(predictor.config.model.plus_one)
    entries, skipped = [], []
    for start in range(0, len(files), batch_size):
        chunk, images = [], []
        for index in range(start, min(start + batch_size, len(files))):
            try:
                images.append(read_image(files[index]))
                chunk.append(index)
            except ValueError as error:
                if not skip_bad_images:
                    raise
                skipped.append({"file": files[index], "reason": str(error)})
                log(f"skipped {files[index]}: {error}")
        for index, image, detections in zip(chunk, images, predictor.predict(images)):
            records = detection_records(detections, label_map, score_threshold, plus_one)
            shown = np.array([r["box"] for r in records], np.float64).reshape(-1, 4)
            picture, factors = drawing.upscale(image, min_picture_side)
            drawn = drawing.draw_detections(
                picture, shown * factors, [r["score"] for r in records],
                [r["class_index"] for r in records], class_names=label_map.names,
                font_size=label_size or None)
            options = {"quality": 92} if picture_format == "jpg" else {}
            Image.fromarray(drawn).save(pictures[index], **options)
            entries.append({"file": files[index], "height": int(image.shape[0]),
                            "width": int(image.shape[1]), "picture": pictures[index],
                            "detections": records})
        log(f"{len(entries)}/{len(files)} images done")
    result = {"model_dir": os.fspath(model_dir), "checkpoint": predictor.checkpoint,
              "score_threshold": float(score_threshold), "images": entries,
              "skipped": skipped}
    with open(os.path.join(output_dir, "detections.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result
