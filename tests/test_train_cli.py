"""bin/paa_train end to end on a tiny generated dataset (issue 6).

Each test runs the real program in a subprocess, as a user would.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from paa_tf.data import synthetic
from tests.helpers.ports import free_ports

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "bin" / "paa_train")]
SMALL = ("model.fpn_channels=32,model.head_channels=32,model.head_convs=1,"
         "train.batch_size=2,train.warmup_steps=2,train.log_every=1,train.lr_steps=[100]")


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """A 24-image shapes dataset at 128 px and a config file pointing at it."""
    root = tmp_path_factory.mktemp("tiny")
    paths = synthetic.make_shapes_dataset(root / "shapes", num_train=24, num_val=4,
                                          image_size=128, seed=3)
    config = root / "tiny.yaml"
    config.write_text(
        f"base: {REPO / 'configs' / 'quickstart.yaml'}\n"
        "data:\n"
        f"  train_images: {paths['train_image_dir']}\n"
        f"  train_annotations: {paths['train_annotation_file']}\n"
        f"  val_images: {paths['val_image_dir']}\n"
        f"  val_annotations: {paths['val_annotation_file']}\n"
        "  min_size: [128]\n  max_size: 128\n  image_size: [128, 128]\n  max_instances: 10\n")
    return config


def env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def run_train(config, model_dir, overrides, *extra, timeout=300):
    command = TRAIN + ["--config", str(config), "--model_dir", str(model_dir),
                       "--override", f"{SMALL},{overrides}", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env(), timeout=timeout,
                          cwd=REPO)


@pytest.mark.slow
def test_override_reaches_the_model(tiny_experiment, tmp_path):
    result = run_train(tiny_experiment, tmp_path, "model.head_channels=64,train.total_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = dict(tf.train.list_variables(str(tmp_path / "ckpt-1")))
    kernels = [shape for name, shape in shapes.items() if name.startswith("model/")]
    assert [3, 3, 32, 64] in kernels  # first tower conv: FPN 32 -> head 64 channels
    assert [3, 3, 64, 6] in kernels  # class logits from a 64-channel tower, 6 shapes
    saved = (tmp_path / "config.yaml").read_text()
    assert "head_channels: 64" in saved
    # The config names no model.num_classes: the label map's 6 are used and saved.
    assert "num_classes" not in (REPO / "configs" / "quickstart.yaml").read_text()
    assert "num_classes: 6" in saved
    label_map = json.loads((tmp_path / "label_map.json").read_text())
    assert len(label_map["classes"] if isinstance(label_map, dict) else label_map) == 6


@pytest.mark.slow
def test_periodic_evaluation_writes_coco_metrics(tiny_experiment, tmp_path):
    result = run_train(tiny_experiment, tmp_path, "train.total_steps=3,train.eval_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval: {" in result.stdout and '"AP"' in result.stdout
    # the val split's own folder, where `paa_eval --model_dir` writes a val evaluation too
    metrics = json.loads((tmp_path / "eval" / "val" / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0
    assert [f for f in os.listdir(tmp_path / "eval" / "val") if "tfevents" in f]
    # the bad-record report of the input pipeline is repeated at the end
    assert "0 bad records skipped" in result.stdout.split("finished at step 3")[1]


def test_misspelt_override_fails_naming_the_key(tiny_experiment, tmp_path):
    result = run_train(tiny_experiment, tmp_path, "train.totl_steps=3")
    assert result.returncode != 0
    assert "train.totl_steps" in result.stderr and "total_steps" in result.stderr


@pytest.mark.slow
def test_sigkill_then_resume_finishes_the_same_number_of_steps(tiny_experiment, tmp_path):
    overrides = "train.total_steps=30,train.checkpoint_every=3"
    command = TRAIN + ["--config", str(tiny_experiment), "--model_dir", str(tmp_path),
                       "--override", f"{SMALL},{overrides}"]
    log = open(tmp_path.parent / "killed.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env(),
                               cwd=REPO)
    deadline = time.time() + 240
    # Kill once the run is past its first checkpoint, at whatever moment the poll lands.
    while time.time() < deadline and "step 4/30" not in open(log.name).read():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_log = open(log.name).read()
    assert process.returncode == -signal.SIGKILL, killed_log[-3000:]
    assert "finished" not in killed_log
    latest = tf.train.latest_checkpoint(str(tmp_path))
    saved_step = int(latest.rsplit("-", 1)[1])
    assert 3 <= saved_step < 30 and saved_step % 3 == 0
    resumed = run_train(tiny_experiment, tmp_path, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ckpt-{saved_step} at step {saved_step}" in resumed.stdout
    steps = [int(line.split()[1].split("/")[0]) for line in resumed.stdout.splitlines()
             if line.startswith("step ")]
    assert steps[0] == saved_step + 1 and steps[-1] == 30  # continues, and stops at 30
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-30")


@pytest.mark.slow
def test_mixed_precision_step_runs_with_finite_losses(tiny_experiment, tmp_path):
    result = run_train(tiny_experiment, tmp_path, "train.total_steps=2,train.mixed_precision=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 2/2" in result.stdout and "nan" not in result.stdout.lower()
    assert "mixed_precision: true" in (tmp_path / "config.yaml").read_text()


def test_a_wrong_num_classes_stops_before_step_1_naming_both_numbers(tiny_experiment, tmp_path):
    result = run_train(tiny_experiment, tmp_path, "train.total_steps=2,model.num_classes=4")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "paa_train: error: model.num_classes is 4 but" in result.stderr
    assert "has 6 classes" in result.stderr and "Traceback" not in result.stderr
    assert "step 1/" not in result.stdout and not list(tmp_path.glob("ckpt-*"))


@pytest.mark.slow
def test_stop_after_checkpoints_where_it_stops_and_the_next_run_resumes(tiny_experiment,
                                                                         tmp_path):
    """`--stop_after 1` with checkpoints every 100 steps: ckpt-1 is written anyway, and the
    same command without it resumes there. TensorFlow's INFO lines (a checkpoint's
    'Saving symbolic checkpoint' and 'Sharding callback duration') appear only with
    --verbosity=0."""
    quiet = {k: v for k, v in env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = TRAIN + ["--config", str(tiny_experiment), "--model_dir", str(tmp_path),
                       "--override", f"{SMALL},train.total_steps=3,train.checkpoint_every=100"]
    first = subprocess.run(command + ["--stop_after", "1"], capture_output=True, text=True,
                           env=quiet, timeout=300, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "ckpt-1.index").is_file()
    assert f"stopped at step 1 of 3; checkpoint {tmp_path / 'ckpt-1'}" in first.stdout
    chatter = ("Sharding callback duration", "Saving symbolic checkpoint")
    assert not [line for line in chatter if line in first.stdout + first.stderr]
    # No TensorFlow C++ error line (cuInit, oneDNN) by default on a machine without a GPU
    # driver: 'E0000 00:00:...' or '2026-... : E external/...'.
    if not os.path.exists("/proc/driver/nvidia"):
        assert not re.search(r"^(E\d{4} |\S+ \S+: E )", first.stderr, re.M), first.stderr
    second = subprocess.run(command + ["--verbosity=0"], capture_output=True, text=True,
                            env=quiet, timeout=300, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resumed from {tmp_path / 'ckpt-1'} at step 1" in second.stdout
    assert "finished at step 3 of 3" in second.stdout and (tmp_path / "ckpt-3.index").is_file()
    assert all(line in second.stdout + second.stderr for line in chatter), second.stderr[-3000:]
    # Resuming rewrites TensorFlow's checkpoint list: no deprecation warning for a user to read.
    assert "deprecated" not in second.stderr, second.stderr[-3000:]


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(tiny_experiment, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        worker_env = env()
        worker_env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": index}})
        command = TRAIN + ["--config", str(tiny_experiment), "--model_dir", str(tmp_path),
                           "--strategy", "multi_worker", "--override",
                           f"{SMALL},train.total_steps=3,train.checkpoint_every=3"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, env=worker_env,
                                          cwd=REPO))
    try:
        outputs = [p.communicate(timeout=600)[0] for p in processes]
    finally:
        for process in processes:  # a worker waiting on a dead peer must not outlive the test
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
        assert "paa_train: 2 replica(s) with CollectiveAllReduceStrategy" in output, output[:3000]
        assert "step 3/3" in output
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")
    # Only the chief wrote: one event file, no leftover scratch folder of worker 1.
    assert len(os.listdir(tmp_path / "train")) == 1
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".worker")]
    # The chief held the run folder's lock (worker 1 did not fight it) and released it.
    assert not (tmp_path / "train.lock").exists()


def wait_for(predicate, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


@pytest.mark.slow  # three programs, two at once: 35 s on 2 idle cores, 92-220 s shared
def test_a_second_trainer_on_the_folder_exits_2_naming_the_first(tiny_experiment, tmp_path):
    """Two paa_train on one --model_dir: the second stops (exit 2) naming the first's PID and
    writes nothing; once the first is killed (SIGKILL), its stale lock is taken over."""
    command = TRAIN + ["--config", str(tiny_experiment), "--model_dir", str(tmp_path),
                       "--override", f"{SMALL},train.total_steps=2000,train.checkpoint_every=2"]
    log = open(tmp_path.parent / "first.log", "w")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=REPO)
    try:
        assert wait_for(lambda: "step 3/2000" in open(log.name).read()), open(log.name).read()
        lock = json.loads((tmp_path / "train.lock").read_text())
        assert lock["pid"] == first.pid
        before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()
                  if p.name.startswith(("config", "label_map"))}
        second = run_train(tiny_experiment, tmp_path, "train.total_steps=2000")
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"paa_train: error: {tmp_path} is being trained by another bin/paa_train " \
               f"(PID {first.pid} on host " in second.stderr
        assert "Traceback" not in second.stderr and "step 1/" not in second.stdout
        assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()
                if p.name in before} == before
    finally:
        first.kill()
        first.wait()
    assert json.loads((tmp_path / "train.lock").read_text())["pid"] == first.pid  # stale now
    saved = max(int(p.name[5:-6]) for p in tmp_path.glob("ckpt-*.index"))
    third = run_train(tiny_experiment, tmp_path, f"train.total_steps={saved + 1}")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"WARNING: taking over the lock of {tmp_path} left by PID {first.pid}" in third.stdout
    assert f"finished at step {saved + 1}" in third.stdout
    assert not (tmp_path / "train.lock").exists()  # released at the end


def test_base_lr_1e6_exits_3_and_moves_what_it_wrote(tiny_experiment, tmp_path):
    """The issue's case from a fresh start, a checkpoint at every step: step 2's loss (from the
    weights of the first 1e6 update) is ~1e11 times step 1's: nothing is good, ckpt-1 is moved
    to diverged-2/, the lock is released on exit 3."""
    result = run_train(tiny_experiment, tmp_path,
                       "train.base_lr=1e6,train.total_steps=10,train.checkpoint_every=1")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "paa_train: error: the loss diverged at step 2" in result.stderr
    assert "newest good checkpoint (a finite, non-diverging loss was computed from it) is " \
           "none; moved ckpt-1" in result.stderr
    assert "it starts afresh" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("ckpt-*"))
    assert (tmp_path / "diverged-2" / "ckpt-1.index").is_file()
    assert not (tmp_path / "train.lock").exists()


def test_a_config_that_does_not_fit_the_checkpoint_is_one_paragraph(tiny_experiment, tmp_path):
    """The run folder's config.yaml edited (another head width) and the run resumed from it:
    exit 2, one paragraph, and no TensorFlow warning before it (there were ~225)."""
    first = run_train(tiny_experiment, tmp_path, "train.total_steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    saved = tmp_path / "config.yaml"
    text = saved.read_text()
    assert text.count("head_channels: 32") == 1
    saved.write_text(text.replace("head_channels: 32", "head_channels: 64"))
    quiet = {k: v for k, v in env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = TRAIN + ["--model_dir", str(tmp_path), "--override", "train.total_steps=2"]
    result = subprocess.run(command, capture_output=True, text=True, env=quiet, timeout=300,
                            cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("paa_train:")]
    assert len(error) == 1 and error == result.stderr.strip().splitlines()[-1:], result.stderr
    assert f"checkpoint {tmp_path / 'ckpt-1'} does not fit the model being trained" in error[0]
    assert "head_channels 64" in error[0] and "another --model_dir" in error[0]
    # Python's 'WARNING:tensorflow:', absl's 'W1204 20:02:41.8 ...', C++'s '...: W tensorflow/'.
    warning = re.compile(r"WARNING|^W\d{4} |^\S+ \S+: W ")
    warnings = [line for line in result.stderr.splitlines() + result.stdout.splitlines()
                if warning.search(line)]
    assert warnings == [], warnings[:5]
    assert not (tmp_path / "train.lock").exists()
