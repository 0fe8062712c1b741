"""`bin/paa_train`: train a PAA detector from an experiment config.

Example::

    bin/paa_train --config configs/quickstart.yaml --model_dir runs/quickstart
    bin/paa_train --config configs/paa_r50_fpn_1x_coco.yaml --model_dir runs/r50 \\
        --strategy mirrored --override train.batch_size=8,train.mixed_precision=true

Run it again with the same --model_dir to resume from the newest checkpoint.
For several machines, start it on each with TF_CONFIG set and --strategy multi_worker.
While it runs it holds the folder's lock file (`train.lock`): a second paa_train on the
same --model_dir stops with exit code 2 naming the first (paa_tf/training/run_lock.py).
"""

import contextlib

from absl import app

# noqa: F401  (keeps Keras 3 out before TensorFlow loads)
from paa_tf.cli import program
from paa_tf.run_folder import RunFolder
from paa_tf.training.run_lock import RunLock

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.CONFIG.with_help("Experiment YAML file, or a shipped preset by name (quickstart, "
                             "paa_r50_fpn_1x_coco, ...: see configs/). When --model_dir already "
                             "holds a config.yaml from an earlier run and --config is not "
                             "given, that file is used."),
    program.OVERRIDE,
    program.MODEL_DIR.with_help("Folder for checkpoints, config.yaml, label_map.json and "
                                "TensorBoard summaries (train/, eval/). Resumes if it holds "
                                "checkpoints.", required=True),
    program.flag("enum", "strategy", "auto", "Distribution: auto = mirrored over several local "
                 "GPUs, else one device; multi_worker reads the cluster from TF_CONFIG.",
                 enum_values=["auto", "one_device", "mirrored", "multi_worker"]),
    program.flag("integer", "stop_after", None, "Stop this run after this many updates and "
                 "save a checkpoint there (the schedule still counts to train.total_steps); "
                 "run the same command again to continue.", lower_bound=1),
)


def _main(argv):
    # TensorFlow only when training: --help and usage errors stay fast
    from paa_tf.training import checkpoints
    from paa_tf.training import train as train_lib

    run = RunFolder(FLAGS.model_dir)
    if FLAGS.config is None and not run.has_config():
        raise app.UsageError("give --config (no config.yaml in --model_dir to resume from)")
    config = run.config(FLAGS.override, config_path=FLAGS.config)
    if config.train.mixed_precision:
        # after the flags: the policy must be set before any layer is built
        import tf_keras
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = train_lib.build_strategy(FLAGS.strategy)
    print(f"paa_train: {strategy.num_replicas_in_sync} replica(s) with "
          f"{type(strategy).__name__}; global batch {config.train.batch_size}", flush=True)
    # One writer per run folder: the chief holds the lock (the other workers of a
    # multi-worker run write only their scratch copies) until the end, an error included.
    with RunLock(FLAGS.model_dir) if checkpoints.is_chief(strategy) else contextlib.nullcontext():
        trainer = train_lib.Trainer(config, FLAGS.model_dir, strategy)
        trainer.restore_or_initialise()
        trainer.train(stop_after=FLAGS.stop_after)  # NonFiniteLossError: exit code 3
    done = trainer.step >= config.train.total_steps
    print(f"paa_train: {'finished' if done else 'stopped'} at step {trainer.step} of "
          f"{config.train.total_steps}; checkpoint {trainer.keeper.latest}"
          + ("" if done else " (run the same command again to continue)"), flush=True)
    for report in trainer.data_reports:  # skipped records are listed again at the end
        print(report.summary(), flush=True)
    return 0


main = program.entry_point("paa_train", FLAG_SPECS, _main)
