"""Command line for PAA's pictures (``bin/paa_visualize``).

Examples::

    # the assignment of one GT box of a training image (paper Fig. 1 / Fig. 4a)
    bin/paa_visualize --model_dir=runs/quickstart --data_index=3 --output=assignment.png
    bin/paa_visualize --model_dir=runs/quickstart --image=data/shapes/train/train_000004.jpg \
        --gt_index=1 --checkpoint=runs/quickstart/ckpt-500 --output=assignment_500.png
    # positives per GT box over training, from the TensorBoard logs (paper Fig. 4b)
    bin/paa_visualize --model_dir=runs/quickstart --positives_plot --output=positives.png

The assignment picture (`paa_tf.visualization.assignment.assignment_picture`) restores the
checkpoint (default: the newest readable one in ``--model_dir``), pre-processes the image as
evaluation, paa_predict and the export do (`paa_tf.data.inference_preprocess`), runs the
network in inference mode and then PAA's assignment on the image's GT boxes with the run's
``assign`` settings.
``--gt_index`` picks the GT (default: the largest box).
"""

from absl import app

from paa_tf.cli import program

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.MODEL_DIR.as_required(), program.CHECKPOINT,
    program.flag("string", "output", None, "Picture file to write (.png, .jpg, .pdf or .svg).",
                 required=True),
    program.flag("string", "image", None, "An image file of the run's data (its GT boxes are "
                 "looked up in the --split annotations, then the other split)."),
    program.flag("integer", "data_index", None, "Position of the image in the --split records "
                 "(instead of --image).", lower_bound=0),
    program.flag("string", "split", None, "Which split --data_index and --image refer to: "
                 "train (default) or val."),
    program.flag("integer", "gt_index", None, "Which GT box of the image (default: the "
                 "largest).", lower_bound=0),
    program.flag("bool", "positives_plot", False, "Plot positives per GT over training from "
                 "the TensorBoard scalars instead."),
    program.flag("integer", "dpi", 110, "Resolution of the written picture.", lower_bound=20),
)


def _split():
    split = FLAGS.split or "train"
    if split not in ("train", "val"):
        raise app.UsageError(f"--split is {split!r}; give train or val")
    return split


def _run(argv):
    # TensorFlow only only when drawing: --help and usage errors stay fast
    from paa_tf.visualization import assignment, curves, drawing

    if FLAGS.positives_plot:
        figure, scalars = curves.positives_per_gt_plot(FLAGS.model_dir)
        drawing.save_figure(figure, FLAGS.output, dpi=FLAGS.dpi)
        steps, values = scalars.get("pos_per_gt", ([], []))
        if len(steps):
            print(f"pos_per_gt: {len(steps)} points, steps {steps[0]}..{steps[-1]}, "
                  f"last {values[-1]:.3f}")
    else:
        view = assignment.assignment_picture(
            FLAGS.model_dir, FLAGS.output, checkpoint=FLAGS.checkpoint, image=FLAGS.image,
            data_index=FLAGS.data_index, split=_split(), gt_index=FLAGS.gt_index,
            dpi=FLAGS.dpi)
        print(f"{len(view.costs)} candidates: {int(view.positive.sum())} positive, "
              f"{int(view.negative.sum())} negative, {int(view.ignored.sum())} ignored; "
              f"separation at cost {view.separation:.4f}")
    print(f"wrote {FLAGS.output}")
    return 0


main = program.entry_point("paa_visualize", FLAG_SPECS, _run)
