"""Fine-tuning from a trained run vs training from scratch, on a second generated dataset.

The source: the quickstart model (configs/quickstart.yaml) trained `--source_steps` on a
shapes dataset of the quickstart's first 3 classes (ellipse, rectangle, triangle; seed 0).
The target: another shapes dataset (seed 1, other images) of all 6 classes: the 3 shared ones
plus ring, cross and star. Two runs on it with the same budget and schedule: one started
with `train.init_from` = the source run (init_scope auto = all_but_classes: the 3 shared
class channels carried by name, the 3 new ones at the prior), one from the quickstart's
initialisation. Printed: COCO AP (and per-class AP) on the target's val images at each of
`--eval_at` steps, step 0 included (the fine-tuned run's step 0 is its initialisation, so
the shared classes' AP there is what the carried channels alone give).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_finetune.py --work /tmp/bench_finetune

Results: docs/BENCHMARKS.md, "Fine-tuning from a run".
"""

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow's first log line

import tensorflow as tf  # noqa: E402

from bench.bench_common import machine_facts  # noqa: E402
from paa_tf import config as config_lib  # noqa: E402
from paa_tf.data import synthetic  # noqa: E402
from paa_tf.evaluation import evaluate as evaluate_lib  # noqa: E402
from paa_tf.training import train as train_lib  # noqa: E402

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SHARED = synthetic.SHAPE_NAMES[:3]


def data_overrides(paths):
    return (f"data.train_images={paths['train_image_dir']},"
            f"data.train_annotations={paths['train_annotation_file']},"
            f"data.val_images={paths['val_image_dir']},"
            f"data.val_annotations={paths['val_annotation_file']}")


def schedule(steps):
    """The quickstart's schedule shape (warm-up, x0.1 at 82% and 95%) over `steps`."""
    return (f"train.total_steps={steps},train.warmup_steps={max(1, steps // 20)},"
            f"train.lr_steps=[{int(steps * 0.82)},{int(steps * 0.95)}],"
            f"train.checkpoint_every={steps},train.log_every={max(1, steps // 4)}")


def trainer_for(model_dir, overrides):
    config = config_lib.load_config(QUICKSTART, overrides)
    return train_lib.Trainer(config, model_dir, tf.distribute.OneDeviceStrategy("/cpu:0"))


def evaluate(trainer, name, step):
    metrics = evaluate_lib.evaluate_model(trainer.config, trainer.model, verbose=False)
    per_class = metrics["per_category_AP"]
    shared = [per_class[n] for n in SHARED if per_class.get(n) is not None]
    new = [per_class[n] for n in synthetic.SHAPE_NAMES[3:] if per_class.get(n) is not None]
    row = {"run": name, "step": step, "AP": metrics["AP"], "AP50": metrics["AP50"],
           "AP_shared": sum(shared) / len(shared), "AP_new": sum(new) / len(new),
           "per_class": per_class}
    print(f"{name:>10} step {step:4d}: AP {row['AP']:.4f} AP50 {row['AP50']:.4f} | shared "
          f"classes {row['AP_shared']:.4f} | new classes {row['AP_new']:.4f}", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/bench_finetune")
    parser.add_argument("--source_steps", type=int, default=400)
    parser.add_argument("--eval_at", default="0,50,100,200")
    parser.add_argument("--num_train", type=int, default=400)
    parser.add_argument("--num_val", type=int, default=100)
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    print(machine_facts(tf), flush=True)
    source_data = synthetic.make_shapes_dataset(work / "shapes3_seed0", args.num_train,
                                                args.num_val, seed=0, num_classes=3)
    target_data = synthetic.make_shapes_dataset(work / "shapes6_seed1", args.num_train,
                                                args.num_val, seed=1, num_classes=6)
    start = time.time()
    source = trainer_for(work / "source", data_overrides(source_data) + ","
                         + schedule(args.source_steps))
    source.restore_or_initialise()
    source.train()
    print(f"source: {args.source_steps} steps in {time.time() - start:.0f} s", flush=True)
    steps = [int(s) for s in args.eval_at.split(",")]
    rows = []
    for name, extra in (("fine-tune", f",train.init_from={work / 'source'}"),
                        ("scratch", "")):
        trainer = trainer_for(work / name, data_overrides(target_data) + ","
                              + schedule(steps[-1]) + extra)
        trainer.restore_or_initialise()
        for step in steps:
            if step > trainer.step:
                trainer.train(stop_after=step - trainer.step)
            rows.append(evaluate(trainer, name, step))
    out = work / "results.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out} ({time.time() - start:.0f} s in all)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
