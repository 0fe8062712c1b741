"""Orientation buckets (data.buckets: orientation, issue 14): shapes, pipeline, resume, replicas.

Tiny COCO folders with landscape, portrait and square JPEGs are written to tmp_path. The
square canvas pipeline (data.buckets: square) is the oracle: a bucketed element must hold the
same content, boxes and image_info, only less zero padding.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.config import DataConfig
from paa_tf.data import buckets, pipeline
from tests.test_data_bad_input import write_image

# (height, width) of the fixture images: landscape, portrait and square ones.
SIZES = [(96, 150), (150, 96), (100, 100), (90, 160), (160, 90), (120, 140), (140, 120),
         (96, 150), (150, 96), (110, 110), (80, 150), (150, 80)]


def make_mixed_coco(root, sizes=SIZES, **overrides):
    """COCO folder of `sizes` images with two boxes each; returns its bucketed DataConfig."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (height, width) in enumerate(sizes):
        write_image(image_dir / f"{i}.jpg", size=(height, width), seed=i)
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "height": height,
                       "width": width})
        for j, (x, y, w, h) in enumerate(((4.0, 6.0, 30.0, 20.0),
                                          (width / 2, height / 2, width / 3, height / 3))):
            annotations.append({"id": 100 + 2 * i + j, "image_id": 10 + i,
                                "category_id": 1 + j, "bbox": [x, y, w, h], "iscrowd": 0,
                                "area": w * h})
    (root / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations,
         "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    fields = dict(format="coco", train_images=str(image_dir),
                  train_annotations=str(root / "instances.json"), val_images=str(image_dir),
                  val_annotations=str(root / "instances.json"), min_size=(128,), max_size=200,
                  image_size=(256, 256), buckets="orientation", max_instances=4,
                  deterministic=True, num_parallel_calls=2, shuffle_buffer=8)
    fields.update(overrides)
    return DataConfig(**fields)


def square(config):
    return DataConfig(**{**config.__dict__, "buckets": "square"})


def numpy_batches(dataset, count=None):
    data = dataset if count is None else dataset.take(count)
    return [{k: v.numpy() for k, v in batch.items()} for batch in data]


def test_bucket_shapes_for_the_coco_scales():
    coco = DataConfig(min_size=(800,), max_size=1333, image_size=(1408, 1408),
                      buckets="orientation")
    # Multiples of 32 (the stride of C5): 800 rows, 1333 -> 1344 columns.
    assert buckets.bucket_shapes(coco, True) == [(800, 1344), (1344, 800)]
    multi = DataConfig(min_size=(640, 800), max_size=1333, image_size=(1408, 1408),
                       buckets="orientation")
    sides = range(640, 801, 32)  # one bucket pair per distinct 32-rounded scale
    assert buckets.bucket_shapes(multi, True) == [
        shape for side in sides for shape in ((side, 1344), (1344, side))]
    assert buckets.bucket_shapes(multi, False) == [(800, 1344), (1344, 800)]
    shapes, table = buckets.bucket_lookup(multi, True)
    # S = 640 -> 640 rows; 641..672 -> 672; ...; 769..800 -> 800 (landscape row 0, portrait 1).
    assert [shapes[i] for i in table[0, [0, 1, 32, 33, 128, 129, 160]]] == [
        (640, 1344), (672, 1344), (672, 1344), (704, 1344), (768, 1344), (800, 1344),
        (800, 1344)]
    assert shapes[table[1, 160]] == (1344, 800)
    # A scale whose bucket side exceeds the canvas is clipped to it.
    assert buckets.bucket_shapes(DataConfig(min_size=(1400,), max_size=2000,
                                            image_size=(1408, 1408), buckets="orientation"),
                                 True) == [(1408, 1408)]
    assert buckets.bucket_shapes(DataConfig(buckets="square"), True) == [(1408, 1408)]
    with pytest.raises(ValueError, match="data.buckets"):
        buckets.mode_of(DataConfig(buckets="round"))


@pytest.mark.slow
@pytest.mark.parametrize("min_size", [(128,), (100, 128)])
def test_eval_batches_hold_one_bucket_and_the_square_content(tmp_path, min_size):
    # With a training range the evaluation runs at its largest scale (data.eval_shorter_side).
    config = make_mixed_coco(tmp_path, min_size=min_size)
    bucketed = numpy_batches(pipeline.build_dataset(config, "val", False, batch_size=3)[0])
    plain = numpy_batches(pipeline.build_dataset(square(config), "val", False, 3)[0])
    by_id = {int(sid): (b, i) for b in plain for i, sid in enumerate(b["source_id"])}
    seen = []
    for batch in bucketed:
        height, width = batch["image"].shape[1:3]
        assert (height, width) in ((128, 224), (224, 128))
        for i, sid in enumerate(batch["source_id"]):
            seen.append(int(sid))
            other, j = by_id[int(sid)]
            scaled = batch["image_info"][i][1]
            # The bucket of the image's orientation (square images count as landscape).
            assert (height < width) == (scaled[0] <= scaled[1])
            np.testing.assert_array_equal(batch["image_info"][i], other["image_info"][j])
            np.testing.assert_array_equal(batch["gt_boxes"][i], other["gt_boxes"][j])
            np.testing.assert_array_equal(batch["image"][i], other["image"][j][:height, :width])
            assert not other["image"][j][height:].any() and not other["image"][j][:, width:].any()
    assert sorted(seen) == sorted(by_id)  # every image once, partial batches kept


def test_training_batches_are_the_square_stream_regrouped(tmp_path):
    config = make_mixed_coco(tmp_path, min_size=(100, 160), flip_prob=0.5)
    assert buckets.bucket_shapes(config, True) == [(128, 224), (224, 128), (160, 224),
                                                   (224, 160)]
    bucketed = numpy_batches(pipeline.build_dataset(config, "train", True, batch_size=2)[0], 12)
    plain = numpy_batches(pipeline.build_dataset(square(config), "train", True, 1)[0], 60)
    shapes = {b["image"].shape[1:3] for b in bucketed}
    assert len(shapes) >= 2 and shapes <= set(buckets.bucket_shapes(config, True))
    for batch in bucketed:
        height, width = batch["image"].shape[1:3]
        for i in range(2):
            info = batch["image_info"][i]
            # Same element (same flip and drawn S) as somewhere early in the square stream.
            twins = [p for p in plain if p["source_id"][0] == batch["source_id"][i]
                     and np.array_equal(p["image_info"][0], info)
                     and np.array_equal(p["gt_boxes"][0], batch["gt_boxes"][i])
                     and np.array_equal(p["image"][0][:height, :width], batch["image"][i])]
            assert twins, f"element {batch['source_id'][i]} not in the square stream"
            # The smallest bucket of the drawn scale holds it.
            assert info[1][0] <= height and info[1][1] <= width


@pytest.mark.slow
def test_resumed_iterator_continues_the_bucketed_batch_sequence(tmp_path):
    config = make_mixed_coco(tmp_path, min_size=(100, 160), deterministic=False)
    dataset, _ = pipeline.build_dataset(config, "train", True, batch_size=2)
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    path = tf.train.Checkpoint(data=iterator).save(str(tmp_path / "ckpt" / "data"))
    expected = [{k: v.numpy() for k, v in next(iterator).items()} for _ in range(6)]
    fresh = iter(pipeline.build_dataset(config, "train", True, batch_size=2)[0])
    tf.train.Checkpoint(data=fresh).restore(path).assert_consumed()
    for want in expected:
        got = {k: v.numpy() for k, v in next(fresh).items()}
        assert got["image"].shape == want["image"].shape
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert len({b["image"].shape for b in expected}) >= 2  # the sequence switches buckets


@pytest.mark.slow
def test_input_pipelines_split_each_global_batch_of_one_bucket(tmp_path):
    config = make_mixed_coco(tmp_path)
    single = numpy_batches(pipeline.build_dataset(config, "train", True, batch_size=4)[0], 6)
    parts = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        parts.append(numpy_batches(pipeline.build_dataset(
            config, "train", True, batch_size=2, input_context=context)[0], 6))
    for whole, first, second in zip(single, *parts):
        assert first["image"].shape == second["image"].shape == (2, *whole["image"].shape[1:])
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])


def bucketed_trainer(model_dir, data_config, overrides="", strategy=None):
    from paa_tf.training import train as train_lib
    from tests import train_utils

    config = train_utils.tiny_config("model.num_classes=2,train.total_steps=4" +
                                     ("," + overrides if overrides else ""))
    config.data = data_config
    # tf.data's shuffle combines its seed with the global seed, which an earlier Trainer in
    # this process has set: reset it so every trainer's pipeline starts the same stream.
    tf.random.set_seed(0)
    return train_lib.Trainer(config, model_dir,
                             strategy or tf.distribute.OneDeviceStrategy("/cpu:0"))


@pytest.mark.slow  # four tiny training runs: ~60 s alone, more on a loaded machine
def test_trainer_traces_once_per_bucket_and_resumes_the_bucketed_sequence(tmp_path):
    data = make_mixed_coco(tmp_path / "data")
    shapes = {b["image"].shape[1:3] for b in numpy_batches(
        pipeline.build_dataset(data, "train", True, batch_size=2)[0], 4)}
    assert len(shapes) == 2  # both buckets come up in the first 4 steps
    straight = bucketed_trainer(tmp_path / "a", data)
    straight.train()
    assert straight._step_fn.experimental_get_tracing_count() == 2  # not once per step
    first = bucketed_trainer(tmp_path / "b", data)
    first.train(stop_after=2)
    second = bucketed_trainer(tmp_path / "b", data)
    assert second.restore_or_initialise().endswith("ckpt-2")
    second.train()  # continues with batches 3 and 4 of the same sequence
    for a, b in zip(straight.model.weights, second.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    replayed = bucketed_trainer(tmp_path / "c", data)  # control: batches 1 and 2 again
    replayed.train(stop_after=2)
    replayed.iterator = iter(replayed.dataset)
    replayed.train()
    assert any(not np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
               for a, b in zip(straight.model.weights, replayed.model.weights))


@pytest.mark.slow
def test_mixed_precision_bucketed_steps_are_finite(tmp_path):
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trainer = bucketed_trainer(tmp_path / "run", make_mixed_coco(tmp_path / "data"),
                                   "train.mixed_precision=true")
        logs = trainer.train(total_steps=3)
        assert trainer.step == 3 and np.isfinite(logs["loss"])
        assert trainer._step_fn.experimental_get_tracing_count() >= 1
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def test_a_skipped_corrupt_image_leaves_the_bucketed_batches_full(tmp_path):
    from tests.test_data_bad_input import coco_config
    from tests.test_data_corrupt_images import corrupt_image_1

    corrupt_image_1(tmp_path, "jpeg")  # image id 11: a valid header, corrupt data
    config = coco_config(tmp_path, image_size=(256, 256), max_size=200, buckets="orientation")
    dataset, report = pipeline.build_dataset(config, "train", True, batch_size=2,
                                             skip_bad_records=True)
    batches = numpy_batches(dataset, 6)
    assert all(b["image"].shape == (2, 64, 224, 3) for b in batches)  # S = 64, L = 200
    assert {int(i) for b in batches for i in b["source_id"]} == {10, 12}
    assert report.skipped_ids == [11] and report.num_skipped == 1


def test_coco_configs_use_the_buckets_and_the_quickstart_its_square():
    import pathlib

    from paa_tf import config as config_lib

    configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
    coco = sorted(configs.glob("paa_*coco*.yaml"))
    assert len(coco) >= 3
    for path in coco:
        data = config_lib.load_config(path).data
        assert data.buckets == "orientation", path.name
        # The evaluation bucket: 800x1344 at 800/1333; the X-152 release tests at 864/1440.
        side, longer = data.eval_shorter_side, data.max_size
        expected = (800, 1344) if (side, longer) == (800, 1333) else (
            buckets.round_up(side), buckets.round_up(longer))
        assert expected in buckets.bucket_shapes(data, is_training=False), path.name
    quickstart = config_lib.load_config(configs / "quickstart.yaml").data
    assert buckets.bucket_shapes(quickstart, True) == [(256, 256)]
