"""How far a healthy run's loss strays above its running median: the measurement behind the
default `train.divergence_factor` (docs/ROBUSTNESS.md).

Trains the quickstart config (configs/quickstart.yaml: tiny backbone, 256 px shapes) for
`--steps` steps on a generated shapes dataset and judges every step's loss the way the
training loop does (paa_tf/training/divergence.py: the loss over the median of the
`WINDOW` steps before it), through the Trainer's own seam (`trainer.divergence`), with the
per-step loss recovered from the progress window's running means as in training. Prints
the largest ratios and where they happened; with `--override train.base_lr=...` the same
for a run whose learning rate is too high.

    taskset -c 1 .venv/bin/python bench/bench_loss_spikes.py [--steps 300] [--seed 0]
        [--override train.base_lr=1e6]
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_common import machine_facts  # noqa: E402  (bench/: script folder)

import paa_tf  # noqa: E402,F401  (keeps Keras 3 out before TensorFlow loads)
from paa_tf import config as config_lib  # noqa: E402
from paa_tf.data import synthetic  # noqa: E402
from paa_tf.training import divergence  # noqa: E402
from paa_tf.training import train as train_lib  # noqa: E402


class Recorder(divergence.DivergenceMonitor):
    """Judges nothing (factor 0); keeps every loss and its ratio to the running median."""

    def __init__(self):
        super().__init__(0.0)
        self.ratios = []  # (step index from 1, loss, loss / median of the window before)
        self.losses = []

    def judge(self, loss):
        if self.recent:
            self.ratios.append((len(self.losses) + 1, loss, loss / statistics.median(self.recent)))
        self.losses.append(loss)
        return super().judge(loss)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", default="")
    args = parser.parse_args()
    print(machine_facts())
    work = tempfile.mkdtemp(prefix="loss_spikes_")
    paths = synthetic.make_shapes_dataset(os.path.join(work, "shapes"), num_train=600,
                                          num_val=10, image_size=256, seed=0)
    overrides = (f"data.train_images={paths['train_image_dir']},"
                 f"data.train_annotations={paths['train_annotation_file']},"
                 f"train.seed={args.seed},train.checkpoint_every=100000,train.log_every=25")
    if args.override:
        overrides += "," + args.override
    config = config_lib.load_config("configs/quickstart.yaml", overrides)
    trainer = train_lib.Trainer(config, os.path.join(work, "run"),
                                train_lib.build_strategy("one_device"))
    recorder = trainer.divergence = Recorder()
    try:
        trainer.train(total_steps=args.steps)
    except train_lib.NonFiniteLossError as error:
        print(f"stopped: {str(error)[:200]}")
    ratios = sorted(recorder.ratios, key=lambda item: -item[2])
    print(f"quickstart{' with ' + args.override if args.override else ''}, seed {args.seed}: "
          f"{len(recorder.losses)} steps, window {divergence.WINDOW}; loss first "
          f"{recorder.losses[0]:.4g}, last {recorder.losses[-1]:.4g}")
    print("largest loss / median of the steps before it:")
    for step, loss, ratio in ratios[:8]:
        print(f"  step {step:4d}: loss {loss:.4g}, ratio {ratio:.3f}")
    early = [r for s, _, r in recorder.ratios if s <= divergence.WINDOW]
    if early:
        print(f"  largest within the first {divergence.WINDOW} steps: {max(early):.3f}")


if __name__ == "__main__":
    main()
