"""Command line for PAA's pictures (``bin/paa_visualize``).

Examples::

    # the assignment of one GT box of a training image (paper Fig. 1 / Fig. 4a)
    bin/paa_visualize --model_dir=runs/quickstart --data_index=3 --output=assignment.png
    bin/paa_visualize --model_dir=runs/quickstart --image=data/shapes/train/train_000004.jpg \
        --gt_index=1 --checkpoint=runs/quickstart/ckpt-500 --output=assignment_500.png
    # positives per GT box over training, from the TensorBoard logs (paper Fig. 4b)
    bin/paa_visualize --model_dir=runs/quickstart --positives_plot --output=positives.png

The assignment picture restores the checkpoint (default: the newest in ``--model_dir``),
pre-processes the image as the evaluation does (no flip, the largest ``data.min_size``),
runs the network in inference mode and then PAA's assignment on the image's GT boxes with
the run's ``assign`` settings. ``--gt_index`` picks the GT (default: the largest box).
"""

import os
import sys

from absl import app, flags

from paa_tf.cli import errors

FLAGS = flags.FLAGS
_FLAG_NAMES = ("model_dir", "checkpoint", "image", "data_index", "split", "gt_index", "output",
               "positives_plot", "dpi")


def define_flags(flag_values=FLAGS):
    """Defines this command's flags once (importing several CLIs in one process is safe)."""
    if "positives_plot" in flag_values:
        return
    flags.DEFINE_string("model_dir", None, "Training folder (config.yaml, label_map.json, "
                        "checkpoints, train/ TensorBoard logs).", flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the latest in "
                        "--model_dir).", flag_values=flag_values)
    flags.DEFINE_string("image", None, "An image file of the run's data (its GT boxes are "
                        "looked up in the --split annotations, then the other split).",
                        flag_values=flag_values)
    flags.DEFINE_integer("data_index", None, "Position of the image in the --split records "
                         "(instead of --image).", lower_bound=0, flag_values=flag_values)
    flags.DEFINE_enum("split", "train", ["train", "val"], "Which split --data_index and "
                      "--image refer to.", flag_values=flag_values)
    flags.DEFINE_integer("gt_index", None, "Which GT box of the image (default: the largest).",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_string("output", None, "Picture to write (.png, .jpg, .pdf or .svg).",
                        flag_values=flag_values)
    flags.DEFINE_bool("positives_plot", False, "Plot positives per GT over training from the "
                      "TensorBoard scalars instead.", flag_values=flag_values)
    flags.DEFINE_integer("dpi", 110, "Resolution of the written picture.", lower_bound=20,
                         flag_values=flag_values)
    for name in _FLAG_NAMES:
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def load_run(model_dir):
    """(config, LabelMap) of a training folder, with the run's label map as `data.label_map`."""
    from paa_tf import config as config_lib
    from paa_tf.data import label_map as label_map_lib

    config_path = os.path.join(os.fspath(model_dir), "config.yaml")
    if not os.path.isfile(config_path):
        raise ValueError(f"{config_path} not found: --model_dir must be a training folder")
    config = config_lib.load_config(config_path)
    map_path = os.path.join(os.fspath(model_dir), label_map_lib.LABEL_MAP_FILENAME)
    label_map = label_map_lib.load_label_map(map_path)
    config.data.label_map = map_path  # the classes the model was trained with
    return config, label_map


def _find_record(config, split, image=None, index=None):
    """(record, tfrecord layout or None) of the image chosen by `image` or `index`."""
    from paa_tf.data import pipeline

    if index is not None:
        records, _, layout = pipeline.load_records(config.data, split, is_training=False)
        if index >= len(records):
            raise ValueError(f"--data_index={index} but the {split} split has {len(records)} "
                             f"usable images (0..{len(records) - 1})")
        return records[index], layout
    wanted = os.path.realpath(image)
    for name in (split, "val" if split == "train" else "train"):
        try:
            records, _, layout = pipeline.load_records(config.data, name, is_training=False)
        except ValueError:
            continue  # e.g. no val split configured
        by_path = [r for r in records if r.path and os.path.realpath(r.path) == wanted]
        by_name = [r for r in records if r.path
                   and os.path.basename(r.path) == os.path.basename(image)]
        if by_path or by_name:
            return (by_path or by_name)[0], layout
    raise ValueError(f"{image} is not an image of the run's data (data.train_* / data.val_* "
                     "of its config.yaml), so its GT boxes are unknown; pick a training image "
                     "or use --data_index")


def _encoded_bytes(record, layout):
    """The image file bytes of `record` (from its file, or its TFRecord shard)."""
    import tensorflow as tf

    if record.path:
        with open(record.path, "rb") as f:
            return f.read()
    files, counts = layout
    offset = record.tfrecord_index
    for path, count in zip(files, counts):
        if offset < count:
            serialized = next(iter(tf.data.TFRecordDataset(path).skip(offset).take(1)))
            spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
            return tf.io.parse_single_example(serialized, spec)["image/encoded"].numpy()
        offset -= count
    raise ValueError(f"{record.describe()}: record {record.tfrecord_index} not in the shards")


def assignment_picture(model_dir, output, checkpoint=None, image=None, data_index=None,
                       split="train", gt_index=None, dpi=110):
    """Write the assignment picture of one GT; returns the `AssignmentView`."""
    import numpy as np
    import tensorflow as tf

    from paa_tf import export, visualize
    from paa_tf.data import transforms

    if (image is None) == (data_index is None):
        raise ValueError("give exactly one of --image and --data_index")
    config, label_map = load_run(model_dir)
    record, layout = _find_record(config, split, image, data_index)
    if not len(record.boxes):
        raise ValueError(f"{record.describe()} has no GT box to show; pick another image")
    checkpoint = checkpoint or tf.train.latest_checkpoint(model_dir)
    if not checkpoint:
        raise ValueError(f"no checkpoint in {model_dir}; train first or pass --checkpoint")
    data = config.data
    image_size = tuple(int(s) for s in data.image_size)
    model = export.restore_model(config, checkpoint, image_size)
    pixels = transforms.decode_image(tf.constant(_encoded_bytes(record, layout)))
    network_input, info = transforms.preprocess(
        pixels, shorter_side=data.eval_shorter_side, max_size=data.max_size,
        image_size=image_size, pixel_mean=data.pixel_mean, pixel_std=data.pixel_std)
    gt_boxes = transforms.scale_boxes(tf.constant(record.boxes, tf.float32), info,
                                      config.model.plus_one).numpy()
    if gt_index is None:
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        gt_index = int(np.argmax(areas))
    scaled_h, scaled_w = (int(v) for v in info.numpy()[1])
    display = visualize.denormalize(network_input.numpy()[:scaled_h, :scaled_w],
                                    data.pixel_mean, data.pixel_std)
    figure, view = visualize.assignment_figure(
        model, network_input.numpy(), gt_boxes, record.classes, gt_index,
        display_image=display, class_names=label_map.names,
        title=f"PAA assignment of GT {gt_index} in {record.name} "
              f"({os.path.basename(checkpoint)}, separation '{config.assign.separation}')")
    visualize.save_figure(figure, output, dpi=dpi)
    return view


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    if not FLAGS.model_dir or not FLAGS.output:
        raise app.UsageError("--model_dir and --output are required")
    from paa_tf import visualize

    if FLAGS.positives_plot:
        figure, scalars = visualize.positives_per_gt_plot(FLAGS.model_dir)
        visualize.save_figure(figure, FLAGS.output, dpi=FLAGS.dpi)
        steps, values = scalars.get("pos_per_gt", ([], []))
        if len(steps):
            print(f"pos_per_gt: {len(steps)} points, steps {steps[0]}..{steps[-1]}, "
                  f"last {values[-1]:.3f}")
    else:
        view = assignment_picture(
            FLAGS.model_dir, FLAGS.output, checkpoint=FLAGS.checkpoint, image=FLAGS.image,
            data_index=FLAGS.data_index, split=FLAGS.split, gt_index=FLAGS.gt_index,
            dpi=FLAGS.dpi)
        print(f"{len(view.costs)} candidates: {int(view.positive.sum())} positive, "
              f"{int(view.negative.sum())} negative, {int(view.ignored.sum())} ignored; "
              f"separation at cost {view.separation:.4f}")
    print(f"wrote {FLAGS.output}")
    return 0


def main(argv=None):
    """Entry point: parses ``argv`` (default ``sys.argv``) and draws."""
    define_flags()
    errors.run(_run, "paa_visualize", argv)


if __name__ == "__main__":
    main()
