"""A run resumed any number of times sees the input an uninterrupted run sees (issue 16).

Each resume restores the iterator state that the previous resume saved, which is what broke
before: the second resume of a run failed at its first batch ("Expected 1 components but got
0" in IteratorGetNext).
"""

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.data import label_map as label_map_lib
from paa_tf.data import pipeline, tfrecord_convert
from paa_tf.training import train as train_lib
from tests import train_utils
from tests.test_data_bad_input import coco_config, make_coco

LEGS = (2, 1, 3)  # batches read between consecutive save/restore cycles


def resumed_chain(make_iterator, folder, skip=3, legs=LEGS):
    """Batches read by a chain of iterators, each restored from the one before's checkpoint."""
    current = make_iterator()
    for _ in range(skip):
        next(current)
    got = []
    for index, leg in enumerate(legs):
        path = tf.train.Checkpoint(data=current).write(str(folder / f"resume{index}" / "it"))
        current = make_iterator()
        tf.train.Checkpoint(data=current).read(path).assert_consumed()
        got += [next(current) for _ in range(leg)]
    return got


def straight(make_iterator, skip=3, legs=LEGS):
    iterator = make_iterator()
    batches = [next(iterator) for _ in range(skip + sum(legs))]
    return batches[skip:]


def assert_same_batches(expected, got):
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        for key in a:  # same images, same scale draws and flips
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)


def test_coco_iterator_resumes_exactly_three_times_in_a_row(tmp_path):
    config = make_coco(tmp_path / "data", num_images=5)
    config.min_size = (48, 64)  # random scale: the per-element random state must resume too

    def make_iterator():
        dataset, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=2)
        return iter(dataset)

    expected = straight(make_iterator)
    got = resumed_chain(make_iterator, tmp_path / "ckpt")
    # 6 batches of 5 shuffled images: the chain crosses epochs (reshuffled each time).
    assert len({int(i) for b in expected for i in b["source_id"].numpy()}) == 5
    assert_same_batches(expected, got)


def test_tfrecord_iterator_resumes_exactly_three_times_in_a_row(tmp_path):
    config = make_coco(tmp_path, num_images=7)
    tfrecord_convert.convert("coco", str(tmp_path / "tf" / "d"), 3,
                          annotations=config.val_annotations, images=config.val_images)
    config = coco_config(tmp_path, format="tfrecord", train_tfrecords=str(tmp_path / "tf/*"),
                         shuffle_buffer=4, min_size=(48, 64))

    def make_iterator():
        dataset, _ = pipeline.build_dataset(config, "train", is_training=True, batch_size=2)
        return iter(dataset)

    assert_same_batches(straight(make_iterator), resumed_chain(make_iterator, tmp_path / "c"))


def _trainer(model_dir, data_root):
    data = coco_config(data_root, deterministic=True)
    config = train_utils.tiny_config(
        f"data.train_images={data.train_images},data.train_annotations="
        f"{data.train_annotations},data.min_size=[96,128],data.deterministic=true,"
        "model.num_classes=2,train.checkpoint_every=1")
    return train_lib.Trainer(config, model_dir, tf.distribute.OneDeviceStrategy("/cpu:0"))


@pytest.mark.slow  # ~35 s of CPU: four trainers trace their step
def test_three_interrupted_runs_train_like_one_uninterrupted_run(tmp_path):
    """bin/paa_train --stop_after=2, three times, on the real input pipeline (one device)."""
    make_coco(tmp_path / "data", num_images=5)
    whole = _trainer(tmp_path / "whole", tmp_path / "data")
    whole.restore_or_initialise()
    whole.train(total_steps=6)
    for run in range(3):
        part = _trainer(tmp_path / "parts", tmp_path / "data")
        restored = part.restore_or_initialise()
        assert (restored is None) == (run == 0)
        part.train(total_steps=6, stop_after=2)
        assert part.step == 2 * (run + 1)
    # Same batches in the same order (and the same random scales and flips) give the same
    # weights; a reseeded or replayed input would not.
    for a, b in zip(whole.model.weights, part.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.name)


def test_a_training_run_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
    """The label map derived from the data is written beside the checkpoints only."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    make_coco(tmp_path / "data", num_images=2)
    _trainer(tmp_path / "run", tmp_path / "data")  # builds the input pipeline
    # TensorFlow's autograph leaves its generated modules there (not ours to remove).
    left = [p.name for p in scratch.iterdir() if not p.name.startswith("__autograph_generated")]
    assert left == []
    written = label_map_lib.load_label_map(tmp_path / "run" / "label_map.json")
    assert written.ids == (1, 7) and written.names == ("one", "seven")
