"""Checkpoints are found from their files and never lost; only finite states are saved
(issue 16, items 2 and 3)."""

import glob
import hashlib
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.training import train as train_lib
from tests.test_train import make_trainer


def digests(folder):
    """{file name: sha256} of the checkpoint files (ckpt-*) in `folder`."""
    return {pathlib.Path(p).name: hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()
            for p in sorted(glob.glob(str(folder / "ckpt-*")))}


def saved_steps(folder):
    """Steps of the checkpoints in `folder` by their index files, newest first."""
    names = (pathlib.Path(p).name for p in glob.glob(str(folder / "ckpt-*.index")))
    return sorted((int(name[len("ckpt-"):-len(".index")]) for name in names), reverse=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 6 steps with ckpt-2, ckpt-4, ckpt-6 (copied for each test)."""
    folder = tmp_path_factory.mktemp("trained")
    make_trainer(folder).train(total_steps=6)
    assert saved_steps(folder) == [6, 4, 2]
    return folder


def copy_run(source, target):
    target.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["deleted", "emptied", "garbage", "lists_only_the_oldest"])
def test_a_lost_state_file_resumes_from_the_newest_checkpoint_on_disk(trained, tmp_path, damage,
                                                                      capsys):
    run = copy_run(trained, tmp_path / "run")
    state = run / "checkpoint"
    if damage == "deleted":
        state.unlink()
    elif damage == "emptied":
        state.write_text("")
    elif damage == "garbage":
        state.write_bytes(b"\x00\xff model_checkpoint_path: {{{")
    else:
        state.write_text('model_checkpoint_path: "ckpt-2"\n'
                         'all_model_checkpoint_paths: "ckpt-2"\n')
    before = digests(run)
    trainer = make_trainer(run)
    assert trainer.restore_or_initialise() == str(run / "ckpt-6")
    assert trainer.step == 6
    assert "checkpoint state file" in capsys.readouterr().out
    assert digests(run) == before  # nothing rewritten
    if damage != "deleted":
        return
    trainer.train(total_steps=8)  # continues: ckpt-8 beside the others, then rotation
    assert tf.train.latest_checkpoint(str(run)) == str(run / "ckpt-8")
    assert saved_steps(run) == [8, 6, 4]  # keep_checkpoints=3 still applies


def test_unreadable_checkpoints_stop_the_run_instead_of_a_fresh_start(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    (run / "checkpoint").unlink()
    for path in glob.glob(str(run / "ckpt-*.data-*")):
        pathlib.Path(path).write_bytes(b"\x00" * 50)
    before = digests(run)
    trainer = make_trainer(run)
    with pytest.raises(ValueError, match="none of the checkpoints .* can be restored"):
        trainer.restore_or_initialise()
    assert digests(run) == before


@pytest.mark.slow
def test_save_never_replaces_a_checkpoint_the_run_did_not_restore(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    before = digests(run)
    trainer = make_trainer(run)  # restore_or_initialise not called: a fresh start at step 0
    with pytest.raises(RuntimeError, match=r"ckpt-2 exists .* refusing to overwrite"):
        trainer.train(total_steps=2)
    assert digests(run) == before


def test_a_damaged_newest_checkpoint_is_replaced_after_the_fallback(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    for path in glob.glob(str(run / "ckpt-6.data-*")):
        pathlib.Path(path).write_bytes(b"\x00" * 50)
    trainer = make_trainer(run)
    assert trainer.restore_or_initialise() == str(run / "ckpt-4")
    trainer.train(total_steps=6)  # writes a good ckpt-6 over the unreadable one
    again = make_trainer(run)
    assert again.restore_or_initialise() == str(run / "ckpt-6") and again.step == 6


def test_non_finite_weights_after_a_finite_loss_are_not_saved(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model
    original = model.train_step

    def poisoned(data):
        logs = original(data)  # the loss of this step is finite
        # From the 4th update on, one kernel becomes infinite (as with an infinite LR).
        kernel = model.trainable_weights[0]
        kernel.assign(tf.where(model.optimizer.iterations >= 4, kernel * np.inf, kernel))
        return logs
    model.train_step = poisoned
    with pytest.raises(train_lib.NonFiniteWeightsError,
                       match=r"1 of \d+ .* after step 4 .* newest good checkpoint .* is .*ckpt-2"):
        trainer.train()
    assert saved_steps(tmp_path) == [2]
    resumed = make_trainer(tmp_path)
    resumed.restore_or_initialise()
    assert all(np.isfinite(v.numpy()).all() for v in resumed.model.weights)


def test_a_save_killed_midway_is_skipped(trained, tmp_path, capsys):
    """What a kill inside a save leaves: TensorFlow's temp folder (removed at the next start,
    with a note), data moved but no index (skipped)."""
    run = copy_run(trained, tmp_path / "run")
    (run / "ckpt-6.index").unlink()  # killed between moving the data and writing the index
    temp = run / "ckpt-8_temp"  # killed while writing the shards: what TensorFlow leaves
    temp.mkdir()
    (temp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"")
    (temp / "part-00000-of-00001.index").write_bytes(b"\x01" * 64)
    trainer = make_trainer(run)
    assert trainer.restore_or_initialise() == str(run / "ckpt-4") and trainer.step == 4
    assert not temp.exists()
    assert f"NOTE: removed {temp}: the temporary folder of a save" in capsys.readouterr().out
    trainer.train(total_steps=6)  # the incomplete ckpt-6 is written again, completely
    assert make_trainer(run).restore_or_initialise() == str(run / "ckpt-6")


def test_a_resume_without_the_input_position_says_so(trained, tmp_path, capsys):
    """train.checkpoint_data=false (and multi-worker runs) reseed the input order: logged."""
    run = copy_run(trained, tmp_path / "run")
    trainer = make_trainer(run, "train.checkpoint_data=false")
    assert trainer.restore_or_initialise() == str(run / "ckpt-6")
    assert "input order is reseeded with the step, not restored" in capsys.readouterr().out
    exact = make_trainer(run)
    exact.restore_or_initialise()
    assert "reseeded" not in capsys.readouterr().out
