"""`bin/paa_ablate`: the paper's Table 1 ablations, trained at quickstart scale.

Example::

    bin/paa_ablate --output_dir runs/ablate --steps 800 --seeds 0,1,2
    bin/paa_ablate --output_dir runs/ablate --steps 800 --seeds 0 --rows iou,paa_ioupred
    bin/paa_ablate --output_dir runs/ablate --steps 800 --seeds 0,1,2 --report_only

Every training runs `paa_tf.cli.train` on the quickstart preset (generating the shapes
dataset first if it is missing) with the same budget per seed; each is then scored with
`paa_tf.cli.eval`. Finished runs are reused, interrupted ones resume, and a training that
fails (say, a non-finite loss) is recorded as failed in the table instead of stopping the
rest. The report (ablations.md, ablations.png, ablations.json) covers whatever has finished.
"""

import json
import os
import subprocess
import sys
import time

from paa_tf.cli import program
from paa_tf.experiments import ablation
from paa_tf.run_folder import RunFolder

CONFIG = "quickstart"  # the shipped preset, by name: runs outside the checkout too

FLAGS = program.FLAGS
FLAG_SPECS = (
    program.OUTPUT_DIR.with_help("Folder for the runs and the report, e.g. runs/ablate."
                                 ).as_required(),
    program.flag("integer", "steps", 800, "Training steps (of 8 images) per row and seed; the "
                 "LR schedule is the quickstart's, scaled to this length.", lower_bound=1),
    program.flag("list", "seeds", ["0"], "Seeds to train each row with (comma-separated)."),
    program.flag("list", "rows", [], "Training keys to run (default all): "
                 + ", ".join(ablation.trainings())),
    program.CONFIG.with_help(f"Base experiment config (default: {CONFIG})."),
    program.OVERRIDE.with_help("Overrides applied to every training (e.g. a smaller data set "
                               "for a smoke test), as in bin/paa_train."),
    program.flag("bool", "report_only", False, "Only write the report from the finished runs."),
)


def _run(command, log_path):
    """Runs `command`, appending its output to `log_path`; returns the exit code."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def _last_line(log_path):
    """The last non-blank line of a log: for a Python failure, the exception."""
    with open(log_path, errors="replace") as log:
        lines = [line.strip() for line in log if line.strip()]
    return lines[-1][:200] if lines else "no output"


def _config():
    return FLAGS.config or CONFIG


def _ensure_shapes_dataset():
    """Generates the quickstart's dataset when the base config points at it and it is absent."""
    if _config() != CONFIG or os.path.isfile("data/shapes/annotations/instances_val.json"):
        return
    print("[ablate] generating data/shapes (bin/paa_make_shapes)", flush=True)
    subprocess.run([sys.executable, "-m", "paa_tf.cli", "paa_make_shapes", "--output_dir",
                    "data/shapes"], check=True)


def _train_and_evaluate(training, overrides, seed, evaluations):
    """One training (resumed or reused if done) and its evaluations; False if it failed."""
    model_dir = ablation.run_dir(FLAGS.output_dir, training, seed)
    os.makedirs(model_dir, exist_ok=True)
    if os.path.isfile(os.path.join(model_dir, "FAILED.json")):
        print(f"[ablate] {training} seed {seed}: failed earlier (delete "
              f"{model_dir}/FAILED.json to retry)", flush=True)
        return False
    ablation.check_budget(model_dir, FLAGS.steps)
    log_path = os.path.join(model_dir, "ablate.log")
    all_overrides = list(overrides) + list(ablation.budget_overrides(FLAGS.steps, seed))
    extra = [arg for override in FLAGS.override for arg in ("--override", override)]
    start = time.time()
    run = RunFolder(model_dir)
    if not run.has_checkpoint(FLAGS.steps):
        print(f"[ablate] training {training} seed {seed} ({FLAGS.steps} steps)", flush=True)
        code = _run([sys.executable, "-m", "paa_tf.cli", "paa_train", "--config", _config(),
                     "--model_dir", model_dir, "--override", ",".join(all_overrides)] + extra,
                    log_path)
        if code != 0 or not run.has_checkpoint(FLAGS.steps):
            reason = f"training exited with code {code}: {_last_line(log_path)} (log: {log_path})"
            with open(os.path.join(model_dir, "FAILED.json"), "w") as f:
                json.dump({"reason": reason}, f)
            print(f"[ablate] {training} seed {seed}: {reason}", flush=True)
            return False
    for voting, score in evaluations:
        out = ablation.eval_dir(model_dir, voting, score)
        if os.path.isfile(os.path.join(out, "metrics.json")):
            continue
        eval_overrides = f"eval.score_voting={str(voting).lower()}" + (
            f",eval.score={score}" if score else "")
        code = _run([sys.executable, "-m", "paa_tf.cli", "paa_eval", "--model_dir", model_dir,
                     "--override", eval_overrides, "--output_dir", out], log_path)
        if code != 0:
            raise RuntimeError(f"evaluation of {model_dir} failed with code {code}; see "
                               f"{log_path}")
    metrics = ablation.load_run(model_dir, False) or ablation.load_run(model_dir, True)
    print(f"[ablate] {training} seed {seed}: done in {time.time() - start:.0f} s, AP "
          f"{metrics['AP']:.3f}", flush=True)
    return True


def _main(argv):
    seeds = [int(s) for s in FLAGS.seeds]
    rows = ablation.select_rows(FLAGS.rows)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    _run_all(seeds, rows)  # ValueError: a run of another budget in --output_dir
    return 0


def _run_all(seeds, rows):
    if not FLAGS.report_only:
        _ensure_shapes_dataset()
        for seed in seeds:  # every row once before any row twice: partial runs stay useful
            for training, overrides in ablation.trainings(rows).items():
                evaluations = sorted({(r.voting, r.score) for r in rows
                                      if r.training == training})
                _train_and_evaluate(training, overrides, seed, evaluations)
                ablation.write_report(FLAGS.output_dir, seeds, FLAGS.steps)
    records = ablation.write_report(FLAGS.output_dir, seeds, FLAGS.steps)
    print(ablation.markdown_table(records))
    print(f"[ablate] report: {FLAGS.output_dir}/ablations.md, ablations.png", flush=True)


main = program.entry_point("paa_ablate", FLAG_SPECS, _main)
