"""The training loop: resume, checkpoint fallback, non-finite loss stop (issue 6)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.training import train as train_lib
from tests import train_utils


def make_trainer(model_dir, overrides=""):
    config = train_utils.tiny_config(overrides)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    trainer = train_lib.Trainer(config, model_dir, strategy,
                                dataset_fn=train_utils.dataset_fn_for(config.train.batch_size))
    return trainer


def weights_of(model):
    return [v.numpy().copy() for v in model.weights]


def test_resume_continues_at_the_right_step_with_the_same_lr(tmp_path, capsys):
    first = make_trainer(tmp_path)
    assert first.restore_or_initialise() is None
    # Stopped after 3 updates: checkpoints at 2 (every 2) and at 3, where it stopped.
    first.train(stop_after=3)
    assert first.step == 3
    saved_at_3 = tf.train.load_checkpoint(str(tmp_path / "ckpt-3"))
    assert saved_at_3.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 3
    assert (tmp_path / "ckpt-2.index").is_file()
    second = make_trainer(tmp_path)
    assert second.restore_or_initialise().endswith("ckpt-3")
    assert second.step == 3
    # Same weights as the first run had when it stopped at step 3 ...
    kernel = [v for v in second.model.weights if "kernel" in v.name][0]
    name = [n for n, _ in tf.train.list_variables(str(tmp_path / "ckpt-3"))
            if n.startswith("model/") and "kernel" in n][0]
    assert name  # the model's variables are in the checkpoint
    assert np.isfinite(kernel.numpy()).all()
    # ... and the LR of the schedule at that step: warm-up (1/3) before step 4, full after.
    assert float(second.optimizer.learning_rate) == pytest.approx(0.005 / 3, rel=1e-5)
    second.train()
    assert second.step == 6
    assert float(second._current_lr(4)) == pytest.approx(0.005)
    assert float(second._current_lr(5)) == pytest.approx(0.0005)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-6")
    out = capsys.readouterr().out
    assert "step 6/6" in out and "lr " in out and "img/s" in out


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(tmp_path):
    # Model, optimizer slots, step and input position are all restored.
    # Deterministic data + restore of model, optimizer slots and step: the two halves of an
    # interrupted run give the same weights as one run straight through.
    straight = make_trainer(tmp_path / "a", "train.checkpoint_every=2")
    straight.train(total_steps=4)
    first = make_trainer(tmp_path / "b", "train.checkpoint_every=2")
    first.train(total_steps=2)
    second = make_trainer(tmp_path / "b", "train.checkpoint_every=2")
    second.restore_or_initialise()
    # The input iterator's position is restored too: no replay needed.
    second.train(total_steps=4)
    for a, b in zip(weights_of(straight.model), weights_of(second.model)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_corrupted_newest_checkpoint_falls_back_with_warning(tmp_path, capsys):
    trainer = make_trainer(tmp_path)
    trainer.train(total_steps=4)  # ckpt-2 and ckpt-4
    for path in glob.glob(str(tmp_path / "ckpt-4.data-*")):
        with open(path, "r+b") as handle:
            handle.seek(0)
            handle.write(b"\x00garbage" * 64)
            handle.truncate(100)
    again = make_trainer(tmp_path)
    restored = again.restore_or_initialise()
    assert restored.endswith("ckpt-2") and again.step == 2
    assert "ckpt-4 cannot be restored; falling back to" in capsys.readouterr().err


def test_non_finite_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
    """NaN from step 5 on: step 5's loss was computed from the weights saved as ckpt-4, so
    ckpt-4 is not good (moved to diverged-5/); ckpt-2, judged by step 3, is."""
    trainer = make_trainer(tmp_path)
    model = trainer.model
    original = model.train_step

    def poisoned(data):
        logs = original(data)
        # From the fifth update on the loss is NaN (as a diverging run would report it).
        bad = tf.where(model.optimizer.iterations >= 5, np.nan, 0.0)
        return dict(logs, loss=logs["loss"] + bad)
    model.train_step = poisoned
    with pytest.raises(train_lib.NonFiniteLossError,
                       match=r"step 5 .*newest good checkpoint .* is .*ckpt-2; moved ckpt-4 "
                             r".*diverged-5/.*resumes from .*ckpt-2"):
        trainer.train()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    assert sorted(os.listdir(tmp_path / "diverged-5")) == [
        "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    assert not glob.glob(str(tmp_path / "ckpt-4*")) and not glob.glob(str(tmp_path / "ckpt-5*"))


def test_run_files_written_beside_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train(total_steps=2)
    from paa_tf import config as config_lib
    assert config_lib.load_config(tmp_path / "config.yaml") == trainer.config
    assert os.path.isdir(tmp_path / "train") and os.listdir(tmp_path / "train")


def test_progress_line_format():
    line = train_lib.progress_line(250, 2000, 10.0, 50, 8, {"loss": 1.23456, "loss_cls": 0.5},
                                   0.01)
    assert line.startswith("step 250/2000 (12%) | ETA 5m50s | 40.0 img/s | loss 1.235")
    assert line.endswith("lr 0.01")


def test_backbone_checkpoint_loads_on_a_fresh_start_only(tmp_path, capsys):
    donor = make_trainer(tmp_path / "donor")
    weights = tmp_path / "backbone.weights.h5"
    donor.model.backbone.save_weights(str(weights))
    fresh = make_trainer(tmp_path / "run", f"model.backbone_checkpoint={weights}")
    assert fresh.restore_or_initialise() is None
    assert "Backbone initialised from" in capsys.readouterr().out
    for ours, theirs in zip(fresh.model.backbone.weights, donor.model.backbone.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    fresh.train(total_steps=2)
    resumed = make_trainer(tmp_path / "run", f"model.backbone_checkpoint={weights}")
    assert resumed.restore_or_initialise().endswith("ckpt-2")
    out = capsys.readouterr().out
    assert "Resumed from" in out and "Backbone initialised" not in out


def test_training_refuses_a_partial_backbone_checkpoint_unless_allowed(tmp_path):
    # A checkpoint with only the tiny backbone's first conv kernel, at its object path.
    first_conv = tf.train.Checkpoint(kernel=tf.Variable(tf.ones([3, 3, 3, 16])))
    path = tf.train.Checkpoint(backbone=tf.train.Checkpoint(
        **{"layer_with_weights-0": first_conv})).write(str(tmp_path / "partial" / "ckpt-1"))
    trainer = make_trainer(tmp_path / "run", f"model.backbone_checkpoint={path}")
    with pytest.raises(ValueError, match=r"backbone variables missing from the file: "
                                         r"layer_with_weights-1/gamma \(stage1_down_bn/gamma\)"):
        trainer.restore_or_initialise()
    trainer = make_trainer(tmp_path / "run", f"model.backbone_checkpoint={path},"
                                             "model.backbone_checkpoint_partial=true")
    assert trainer.restore_or_initialise() is None
    np.testing.assert_array_equal(trainer.model.backbone.weights[0].numpy(), 1.0)


def test_training_pipeline_gives_plus_one_ground_truth_with_model_plus_one(tmp_path):
    """The trainer's own input pipeline follows the one switch model.plus_one."""
    from paa_tf.data import pipeline
    from tests.test_data_bad_input import make_coco

    data = make_coco(tmp_path / "coco", num_images=1)  # bbox [4, 6, 30, 20] in a 64x48 image
    overrides = (f"data.train_images={data.train_images},"
                 f"data.train_annotations={data.train_annotations},data.format=coco,"
                 "data.flip_prob=0.0,data.min_size=[96],data.label_map=,model.num_classes=2")
    expected = {}
    for plus_one in (False, True):
        config = train_utils.tiny_config(overrides + f",model.plus_one={str(plus_one).lower()}")
        trainer = train_lib.Trainer(config, tmp_path / f"run{plus_one}",
                                    tf.distribute.OneDeviceStrategy("/cpu:0"))
        boxes = next(trainer.iterator)["gt_boxes"].numpy()[:, 0]
        dataset, _ = pipeline.build_dataset(config.data, "train", batch_size=1,
                                            plus_one=plus_one)
        expected[plus_one] = next(iter(dataset))["gt_boxes"].numpy()[0, 0]
        np.testing.assert_allclose(boxes, np.stack([expected[plus_one]] * 2), rtol=1e-6)
    # Scaled 2x (48 -> 96): the inclusive max corner is one original pixel (2 px) less.
    np.testing.assert_allclose(expected[False] - expected[True], [0, 0, 2, 2], atol=1e-5)
