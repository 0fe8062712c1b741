"""`bin/paa_train`: train a PAA detector from an experiment config.

Example::

    bin/paa_train --config configs/quickstart.yaml --model_dir runs/quickstart
    bin/paa_train --config configs/paa_r50_fpn_1x_coco.yaml --model_dir runs/r50 \\
        --strategy mirrored --mixed_precision --override train.batch_size=8

Run it again with the same --model_dir to resume from the newest checkpoint.
For several machines, start it on each with TF_CONFIG set and --strategy multi_worker.
"""

import os

from absl import app, flags

import paa_tf  # noqa: F401  (keeps Keras 3 out before TensorFlow loads)
from paa_tf.cli import errors

flags.DEFINE_string("config", None, "Experiment YAML file (see configs/). When --model_dir "
                    "already holds a config.yaml from an earlier run and --config is not "
                    "given, that file is used.")
flags.DEFINE_multi_string("override", [], "Dotted overrides 'section.key=value', comma-"
                          "separated or repeated, e.g. train.total_steps=500,eval.batch_size=4. "
                          "Values are YAML scalars or [lists].")
flags.DEFINE_string("model_dir", None, "Folder for checkpoints, config.yaml, label_map.json "
                    "and TensorBoard summaries (train/, eval/). Resumes if it holds checkpoints.")
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker"],
                  "Distribution: auto = mirrored over several local GPUs, else one device; "
                  "multi_worker reads the cluster from TF_CONFIG.")
flags.DEFINE_bool("mixed_precision", None, "Train with the mixed_float16 policy and loss "
                  "scaling (losses and assignment stay float32). Default: train.mixed_precision.")
flags.DEFINE_integer("stop_after", None, "Stop this run after this many updates (the "
                     "schedule still counts to train.total_steps; run again to continue).")
flags.mark_flag_as_required("model_dir")

FLAGS = flags.FLAGS


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    from paa_tf import config as config_lib
    from paa_tf import train as train_lib

    config_path = FLAGS.config
    if config_path is None:
        saved = os.path.join(FLAGS.model_dir, "config.yaml")
        if not os.path.isfile(saved):
            raise app.UsageError("give --config (no config.yaml in --model_dir to resume from)")
        config_path = saved
    config = config_lib.load_config(config_path, FLAGS.override)
    if FLAGS.mixed_precision is not None:
        config.train.mixed_precision = FLAGS.mixed_precision
    if config.train.mixed_precision:
        import tf_keras
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = train_lib.build_strategy(FLAGS.strategy)
    print(f"paa_train: {strategy.num_replicas_in_sync} replica(s) with "
          f"{type(strategy).__name__}; global batch {config.train.batch_size}", flush=True)
    trainer = train_lib.Trainer(config, FLAGS.model_dir, strategy)
    trainer.restore_or_initialise()
    trainer.train(stop_after=FLAGS.stop_after)  # NonFiniteLossError: exit code 3
    print(f"paa_train: finished at step {trainer.step}; checkpoint {trainer.keeper.latest}",
          flush=True)
    for report in trainer.data_reports:  # skipped records are listed again at the end
        print(report.summary(), flush=True)
    return 0


def main():
    errors.run(_main, "paa_train")


if __name__ == "__main__":
    main()
