"""Evaluation of a model on the val split: run it over the images, score with pycocotools.

`evaluate_model` reads the val split of `config.data` (COCO, VOC or TFRecord), runs the
detector over it (`paa_tf.inference.detection.make_predict_fn`, or test-time augmentation
with `paa_tf.inference.tta` when `eval.tta_scales` / `eval.tta_flip` ask for it) and scores the
detections against the ground truth with `paa_tf.evaluation.coco_scoring`. `evaluate_exported`
does the same for an exported SavedModel (`paa_tf.serving.reader`).
"""

from paa_tf.data import pipeline
from paa_tf.data import records as records_lib
from paa_tf.evaluation import coco_scoring
from paa_tf.evaluation import inputs as eval_inputs
from paa_tf.inference import detection, tta
from paa_tf.serving import reader as export_reader


def val_ground_truth(data_config, label_map):
    """`COCO` ground truth of the val split: `data.val_annotations` for COCO data, else the
    validated val records converted to COCO (`paa_tf.data.records.to_coco_dict`)."""
    if data_config.format == "coco":
        return coco_scoring.load_coco(data_config.val_annotations)
    records, _, _ = pipeline.load_records(data_config, "val", is_training=False)
    return coco_scoring.coco_from_dict(records_lib.to_coco_dict(records, label_map))


def evaluate_model(config, model, output_dir=None, max_batches=None, params=None,
                   verbose=True, observer=None):
    """COCO evaluation of `model` on the val split of `config.data` (COCO, VOC or TFRecord).

    Ground truth from `val_ground_truth`. With `eval.tta_scales` / `eval.tta_flip` the
    images are evaluated with test-time augmentation (`tta.make_tta_predict_fn`). `observer`
    sees each batch and its scored records (`coco_scoring.evaluate_dataset`). Returns
    `coco_scoring.coco_evaluate`'s metrics.
    """
    data_cfg = config.data
    label_map = pipeline.dataset_label_map(data_cfg)
    coco_gt = val_ground_truth(data_cfg, label_map)
    views = tta.tta_views(config)
    if views:
        dataset, _ = eval_inputs.encoded_eval_dataset(data_cfg, config.eval.batch_size)
        predict_fn = tta.make_tta_predict_fn(config, model, views, params)
    else:
        dataset, _ = pipeline.build_dataset(data_cfg, split="val", is_training=False,
                                            batch_size=config.eval.batch_size, repeat=False)
        predict_fn = detection.make_predict_fn(config, model, params)
    return coco_scoring.evaluate_dataset(dataset, predict_fn, coco_gt, label_map=label_map,
                                         output_dir=output_dir, max_batches=max_batches,
                                         plus_one=config.model.plus_one, verbose=verbose,
                                         observer=observer)


def evaluate_exported(config, saved_model, output_dir=None, max_batches=None, verbose=True,
                      observer=None):
    """COCO evaluation of the SavedModel at `saved_model` (an export folder or one version
    of it) on the val split of `config.data`, fed the undecoded image files. The export's
    own label map names the classes; `observer` as in `evaluate_model`. Returns
    `coco_scoring.coco_evaluate`'s metrics."""
    predict_fn = export_reader.load_exported(saved_model)
    dataset, _ = eval_inputs.encoded_eval_dataset(config.data, config.eval.batch_size)
    coco_gt = val_ground_truth(config.data, predict_fn.label_map)
    return coco_scoring.evaluate_dataset(dataset, predict_fn, coco_gt,
                                         label_map=predict_fn.label_map, output_dir=output_dir,
                                         max_batches=max_batches,
                                         plus_one=config.model.plus_one, verbose=verbose,
                                         observer=observer)
