"""Command line for detections on image files (``bin/paa_predict``).

Examples::

    bin/paa_predict --model_dir=runs/quickstart --images data/shapes/val \
        --output_dir=/tmp/predictions
    bin/paa_predict --model_dir=runs/quickstart --checkpoint=runs/quickstart/ckpt-2000 \
        --images a.jpg b.png photos/ --output_dir=out --score_threshold=0.5 --format=jpg

``--images`` takes files and folders (a folder's JPEG/PNG/BMP/GIF/WebP files, not its
subfolders); further paths may follow it as plain arguments. The images go through the
evaluation pre-processing of the run's config (resize to the largest ``data.min_size``,
longer side <= ``data.max_size``, pad to ``data.image_size``), in batches, and through the
model and the full post-processing (candidates, NMS, score voting) of ``eval.*``.

Writes into ``--output_dir``:
  ``detections.json``: {"model_dir", "checkpoint", "score_threshold", "images": [{"file",
    "height", "width", "picture", "detections": [{"bbox": [x, y, w, h] (COCO, original
    pixels), "box": [ymin, xmin, ymax, xmax] (original pixels), "score", "class_index"
    (contiguous), "category_id" (dataset id), "class_name"}]}], "skipped": [{"file",
    "reason"}]}; detections sorted by descending score, those below --score_threshold left out;
  one picture per image, ``<file stem>.<format>``, with the boxes, class names and scores.

An unreadable or undecodable image stops the run with an error naming the file, unless
``--skip_bad_images`` is given: then it is skipped, listed under "skipped" and counted.
"""

import json
import os
import sys

from absl import app, flags

from paa_tf.cli import errors

FLAGS = flags.FLAGS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_FLAG_NAMES = ("model_dir", "checkpoint", "images", "output_dir", "score_threshold", "format",
               "batch_size", "skip_bad_images", "min_picture_side")


def define_flags(flag_values=FLAGS):
    """Defines this command's flags once (importing several CLIs in one process is safe)."""
    if "skip_bad_images" in flag_values:
        return
    flags.DEFINE_string("model_dir", None, "Training folder: config.yaml, label_map.json and "
                        "checkpoints (bin/paa_train --model_dir).", flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest in "
                        "--model_dir).", flag_values=flag_values)
    flags.DEFINE_multi_string("images", [], "Image files or folders; more paths may follow "
                              "as plain arguments (--images a.jpg b.jpg dir/).",
                              flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where detections.json and the pictures go.",
                        flag_values=flag_values)
    flags.DEFINE_float("score_threshold", 0.3, "Keep detections scoring at least this (in "
                       "the JSON and the pictures).", lower_bound=0.0, flag_values=flag_values)
    flags.DEFINE_enum("format", "png", ["png", "jpg"], "Picture format.",
                      flag_values=flag_values)
    flags.DEFINE_integer("batch_size", None, "Images per forward pass (default: "
                         "eval.batch_size of the run's config).", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_bool("skip_bad_images", False, "Skip unreadable images (listed in "
                      "detections.json and counted) instead of stopping.",
                      flag_values=flag_values)
    flags.DEFINE_integer("min_picture_side", 0, "Enlarge small pictures so that their shorter "
                         "side is at least this many pixels before drawing (readable labels "
                         "on small images); 0 keeps the image size.", lower_bound=0,
                         flag_values=flag_values)
    for name in _FLAG_NAMES:
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


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
    """A restored training run: pre-processing, batched network and post-processing.

    `predict(images)` takes uint8 [h, w, 3] arrays (sizes may differ) and returns one
    detections dict per image with NumPy `boxes` float32 [D, 4] yxyx original pixels,
    `scores` float32 [D], `classes` int32 [D] contiguous, sorted by descending score, padding
    removed (before any display threshold).
    """

    def __init__(self, model_dir, checkpoint=None):
        import tensorflow as tf

        from paa_tf import config as config_lib
        from paa_tf import export, inference
        from paa_tf.data import label_map as label_map_lib
        from paa_tf.data import transforms

        model_dir = os.fspath(model_dir)
        config_path = os.path.join(model_dir, "config.yaml")
        if not os.path.isfile(config_path):
            raise ValueError(f"{config_path} not found: --model_dir must be a training folder "
                             "(bin/paa_train writes config.yaml, label_map.json, checkpoints)")
        self.config = config_lib.load_config(config_path)
        self.label_map = label_map_lib.load_label_map(
            os.path.join(model_dir, label_map_lib.LABEL_MAP_FILENAME))
        data = self.config.data
        self.image_size = tuple(int(s) for s in data.image_size)
        if checkpoint:
            self.checkpoint = checkpoint
            self.model = export.restore_model(self.config, checkpoint, self.image_size)
        else:  # the newest readable one, as training resumes
            self.model, self.checkpoint = export.restore_newest_model(
                self.config, model_dir, self.image_size)
        self._detect = inference.make_predict_fn(self.config, self.model)
        shorter = data.eval_shorter_side

        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def preprocess(image):
            return transforms.preprocess(image, shorter_side=shorter, max_size=data.max_size,
                                         image_size=self.image_size,
                                         pixel_mean=data.pixel_mean, pixel_std=data.pixel_std)

        self._preprocess = preprocess

    def predict(self, images):
        import numpy as np

        if not images:
            return []
        pairs = [self._preprocess(image) for image in images]
        batch = {"image": np.stack([p[0].numpy() for p in pairs]),
                 "image_info": np.stack([p[1].numpy() for p in pairs])}
        out = {k: np.asarray(v) for k, v in self._detect(batch).items()}
        results = []
        for b in range(len(images)):
            count = int(out["num_detections"][b])
            keep = np.flatnonzero(out["detection_classes"][b, :count] >= 0)
            order = keep[np.argsort(-out["detection_scores"][b, keep], kind="stable")]
            results.append({"boxes": out["detection_boxes"][b, order].astype(np.float32),
                            "scores": out["detection_scores"][b, order].astype(np.float32),
                            "classes": out["detection_classes"][b, order].astype(np.int32)})
        return results


def read_image(path):
    """uint8 [h, w, 3] RGB pixels of an image file (TensorFlow's decoder, as in training).

    Raises ValueError naming the file when it cannot be read or decoded.
    """
    import tensorflow as tf

    from paa_tf.data import transforms

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
                   picture_format="png", batch_size=None, skip_bad_images=False,
                   min_picture_side=0, log=print):
    """Detections and pictures for `image_paths` (files or folders); see the module docstring.

    Returns the dict written to `output_dir/detections.json`.
    """
    import numpy as np
    from PIL import Image

    from paa_tf import visualize

    files = collect_images(image_paths)
    predictor = Predictor(model_dir, checkpoint)
    log(f"restored {predictor.checkpoint}; {len(files)} images")
    batch_size = int(batch_size or predictor.config.eval.batch_size)
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
            picture, factors = visualize.upscale(image, min_picture_side)
            drawn = visualize.draw_detections(
                picture, shown * factors, [r["score"] for r in records],
                [r["class_index"] for r in records], class_names=label_map.names)
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


def _run(argv):
    paths = list(FLAGS.images) + list(argv[1:])
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir (a training folder) is required")
    if not paths:
        raise app.UsageError("give the images: --images FILE_OR_FOLDER [more paths ...]")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required (detections.json and pictures go there)")
    result = run_prediction(
        FLAGS.model_dir, paths, FLAGS.output_dir, checkpoint=FLAGS.checkpoint,
        score_threshold=FLAGS.score_threshold, picture_format=FLAGS.format,
        batch_size=FLAGS.batch_size, skip_bad_images=FLAGS.skip_bad_images,
        min_picture_side=FLAGS.min_picture_side)
    count = sum(len(e["detections"]) for e in result["images"])
    print(f"{len(result['images'])} images, {count} detections with score >= "
          f"{FLAGS.score_threshold}; {len(result['skipped'])} skipped")
    print(f"detections: {os.path.join(FLAGS.output_dir, 'detections.json')}")
    return 0


def main(argv=None):
    """Entry point: parses ``argv`` (default ``sys.argv``) and predicts."""
    define_flags()
    errors.run(_run, "paa_predict", argv)


if __name__ == "__main__":
    main()
