"""A "good" checkpoint is one a finite, non-diverging loss was computed from (issue 23,
item 1): the loss of step N+1 judges the weights saved after step N; a bad loss stops the
run (exit 3), names the newest good checkpoint and moves the later ones aside."""

import json
import os
import re
import statistics

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf.cli import errors
from paa_tf.training import divergence
from paa_tf.training import train as train_lib
from tests.test_train import make_trainer


def test_the_monitor_compares_with_the_median_of_the_steps_before():
    losses = [2.0, 1.0, 50.0, 1.5, 1.2, 1.1]  # one spike of 50 x: judged against the median
    monitor = divergence.DivergenceMonitor(10.0)
    verdicts = [monitor.judge(loss) for loss in losses]
    assert verdicts[2] is not None and "50 is more than" in verdicts[2]  # 50 > 10 x 1.5
    assert [v is None for v in verdicts] == [True, True, False, True, True, True]
    assert list(monitor.recent) == [2.0, 1.0, 1.5, 1.2, 1.1]  # the spike is not kept
    assert monitor.judge(12.1) is not None and monitor.judge(11.9) is None  # 10 x median 1.2
    assert divergence.DivergenceMonitor(0.0).judge(1e30) is None  # 0 turns it off
    # Only the last WINDOW steps count, and a resumed run starts from the recorded ones.
    resumed = divergence.DivergenceMonitor(3.0, recent=[100.0] * 5 + [1.0] * divergence.WINDOW)
    assert statistics.median(resumed.recent) == 1.0 and resumed.judge(3.5) is not None


def test_each_step_loss_is_recovered_from_the_window_means():
    """The loss trackers are tf_keras Means reset every log_every steps (float32)."""
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 3.0, size=40)
    mean = tf_keras.metrics.Mean()
    window, previous = 0, 0.0
    for index, value in enumerate(values):
        if index % 25 == 0:  # log_every = 25
            mean.reset_state()
            window, previous = 0, 0.0
        mean.update_state(value)
        window += 1
        got = divergence.step_loss(float(mean.result()), previous, window)
        assert got == pytest.approx(value, rel=1e-5, abs=1e-6)
        previous = float(mean.result())


def named_good(error):
    """The checkpoint an exit-3 message names good, or None."""
    match = re.search(r"newest good checkpoint .*? is (\S+?)[;.]", str(error))
    return None if match.group(1) == "none" else match.group(1)


def test_base_lr_1e6_stops_and_the_named_checkpoint_trains_on(tmp_path):
    """4 sane steps (ckpt-2, ckpt-4), then resumed with train.base_lr=1e6 and a checkpoint at
    every step: step 5's loss (from ckpt-4) is fine, ckpt-5 holds the weights of the 1e6
    update, step 6's loss from them is not. ckpt-4 is named and resumes with a sane learning
    rate for 10 finite steps; ckpt-5 (what the old check called good) does not train on."""
    make_trainer(tmp_path).train(total_steps=4)
    hot = make_trainer(tmp_path, "train.base_lr=1e6,train.checkpoint_every=1,"
                                 "train.total_steps=30,train.lr_steps=[100]")
    assert hot.restore_or_initialise().endswith("ckpt-4")
    with pytest.raises(train_lib.NonFiniteLossError, match=r"at step 6") as stopped:
        hot.train()
    assert errors.exit_code_of(stopped.value) == errors.EXIT_NON_FINITE
    good = named_good(stopped.value)
    assert good == str(tmp_path / "ckpt-4")
    assert sorted(os.listdir(tmp_path / "diverged-6")) == [
        "ckpt-5.data-00000-of-00001", "ckpt-5.index"]
    record = json.loads((tmp_path / "good_checkpoints.json").read_text())
    assert record["ckpt-4"]["confirmed_by"]["step"] == 5 and "ckpt-5" not in record

    sane = make_trainer(tmp_path, "train.total_steps=14,train.lr_steps=[100]")
    assert sane.restore_or_initialise() == good and sane.step == 4
    sane.train()  # 10 steps; any NaN/inf or diverging loss would raise
    assert sane.step == 14
    recent = list(sane.divergence.recent)[-10:]
    assert len(recent) == 10 and all(0.0 < loss < 10.0 for loss in recent), recent
    assert all(np.isfinite(v.numpy()).all() for v in sane.model.weights)

    # The moved checkpoint, resumed with the same sane learning rate: its first loss is
    # far beyond anything the sane run saw (or not even finite).
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in os.listdir(tmp_path / "diverged-6"):
        (moved / name).write_bytes((tmp_path / "diverged-6" / name).read_bytes())
    again = make_trainer(moved, "train.total_steps=6,train.lr_steps=[100],"
                                "train.divergence_factor=0")
    assert again.restore_or_initialise().endswith("ckpt-5")
    try:
        again.train(total_steps=6)
        first = again.divergence.recent[0]
    except train_lib.NonFiniteLossError:
        first = float("inf")
    assert first > 100 * max(recent), (first, recent)


def test_a_finite_but_diverging_loss_trips_the_divergence_factor(tmp_path):
    """From step 5 the reported loss is 50 x the real one (the gradient is untouched), with a
    progress window of 3 steps: the per-step loss is recovered from the window's means."""
    trainer = make_trainer(tmp_path, "train.log_every=3")
    model = trainer.model
    original = model.forward_and_losses

    def inflated(data, training=False):
        losses, assignment = original(data, training=training)
        boost = tf.where(model.optimizer.iterations >= 4, 49.0, 0.0)  # update 5 (1-based) on
        loss = losses["loss"]
        return dict(losses, loss=loss + tf.stop_gradient(boost * loss)), assignment
    model.forward_and_losses = inflated
    with pytest.raises(train_lib.DivergedLossError, match=r"diverged at step 5") as stopped:
        trainer.train()
    assert errors.exit_code_of(stopped.value) == errors.EXIT_NON_FINITE
    loss, median = (float(v) for v in re.search(
        r"the loss (\S+) is more than train.divergence_factor=10 times (\S+), the median of "
        r"the 4 steps", str(stopped.value)).groups())
    assert 25 < loss / median < 100  # 50 x a loss close to the 4 before it
    assert named_good(stopped.value) == str(tmp_path / "ckpt-2")
    assert os.listdir(tmp_path / "diverged-5") and not (tmp_path / "ckpt-4.index").exists()

    off = make_trainer(tmp_path / "off", "train.log_every=3,train.divergence_factor=0")
    original_off = off.model.forward_and_losses
    off.model.forward_and_losses = lambda data, training=False: (
        lambda out: (dict(out[0], loss=out[0]["loss"] * 50.0), out[1]))(
            original_off(data, training=training))
    off.train()  # the same kind of jump passes when the test is off
    assert off.step == 6


def test_a_resumed_checkpoint_nobody_judged_is_judged_by_the_first_step(tmp_path, capsys):
    """`--stop_after 3` saves ckpt-3 with no loss computed from it yet; the next run's first
    step is NaN: ckpt-3 goes to diverged-4/, ckpt-2 (judged by step 3) is named."""
    make_trainer(tmp_path).train(stop_after=3)
    record = json.loads((tmp_path / "good_checkpoints.json").read_text())
    assert record["ckpt-2"]["confirmed_by"]["step"] == 3 and not record["ckpt-3"]["confirmed_by"]
    assert len(record["ckpt-3"]["recent_losses"]) == 3
    resumed = make_trainer(tmp_path)
    assert resumed.restore_or_initialise().endswith("ckpt-3")
    assert "no loss has been computed from" in capsys.readouterr().out
    assert list(resumed.divergence.recent) == record["ckpt-3"]["recent_losses"]
    original = resumed.model.train_step
    resumed.model.train_step = lambda data: dict(original(data), loss=np.nan)
    with pytest.raises(train_lib.NonFiniteLossError, match="non-finite loss at step 4") as stop:
        resumed.train()
    assert named_good(stop.value) == str(tmp_path / "ckpt-2")
    assert sorted(os.listdir(tmp_path / "diverged-4")) == [
        "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")  # state file rewritten
