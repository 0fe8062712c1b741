"""Subprocess side of tests/test_distributed.py (logical devices and TF_CONFIG must be set
before TensorFlow initialises, so these runs cannot share the pytest process).

    python distributed_worker.py mirrored OUT.json     # single device vs 2-replica Mirrored
    python distributed_worker.py multiworker OUT.json  # one worker of a TF_CONFIG cluster
    python distributed_worker.py bucketed_mirrored OUT.json DIR     # Trainer, bucketed data
    python distributed_worker.py bucketed_multiworker OUT.json DIR  # the same, one worker
    python distributed_worker.py mirrored_resume OUT.json  # 2-replica run resumed 3 times

Writes a JSON report to OUT.json.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from paa_tf.config import build_config  # noqa: E402
from paa_tf.modeling import build_detector  # noqa: E402

IMAGE_SIZE = (128, 128)
OVERRIDES = ("model.backbone=tiny,model.num_classes=3,model.fpn_channels=32,"
             "model.head_channels=32,model.head_convs=2,model.max_level=5")


def synthetic_batch():
    """Two 128x128 images with 2 and 1 boxes (yxyx pixels), padded to 4 GT rows."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *IMAGE_SIZE, 3)).astype(np.float32)
    boxes = np.full((2, 4, 4), -1.0, np.float32)
    classes = np.full((2, 4), -1, np.int32)
    boxes[0, :2] = [[10, 10, 60, 50], [70, 60, 120, 125]]
    classes[0, :2] = [0, 2]
    boxes[1, :1] = [[30, 20, 90, 100]]
    classes[1, :1] = [1]
    return {"image": image, "gt_boxes": boxes, "gt_classes": classes}


def dataset(steps):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # The global batch of 2 images: each of 2 replicas gets one image.
    # Static batch shapes: the assignment needs them (drop_remainder).
    batches = tf.data.Dataset.from_tensor_slices(synthetic_batch()).batch(2, drop_remainder=True)
    return batches.repeat(steps).with_options(options)


def one_step(strategy, initial_weights):
    """Loss and weight change of one SGD(lr=1, no momentum) step: the change is -gradient.

    Returns (logs, {weight name: change}) over every weight (frozen ones change by 0).
    """
    config = build_config(overrides=OVERRIDES)
    with strategy.scope():
        model = build_detector(config, IMAGE_SIZE)
        model.set_weights(initial_weights)
        model.compile(optimizer=tf_keras.optimizers.SGD(1.0, momentum=0.0))
    history = model.fit(dataset(1), epochs=1, verbose=0)
    deltas = {w.name: w1 - w0
              for w, w0, w1 in zip(model.weights, initial_weights, model.get_weights())}
    return {k: float(v[-1]) for k, v in history.history.items()}, deltas


def run_mirrored(out_path):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    tf_keras.utils.set_random_seed(0)
    initial = build_detector(build_config(overrides=OVERRIDES), IMAGE_SIZE).get_weights()
    single_logs, single = one_step(tf.distribute.get_strategy(), initial)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored_logs, replicated = one_step(mirrored, initial)
    difference = {name: replicated[name] - single[name] for name in single}
    report = {"replicas": mirrored.num_replicas_in_sync, "single": single_logs,
              "mirrored": mirrored_logs,
              # per weight: (max |change difference|, max |single-device change|)
              "weights": {name: [float(np.max(np.abs(difference[name]))),
                                 float(np.max(np.abs(single[name])))] for name in single},
              "global_relative_difference": float(
                  np.sqrt(sum(np.sum(d ** 2) for d in difference.values())) /
                  np.sqrt(sum(np.sum(g ** 2) for g in single.values())))}
    with open(out_path, "w") as f:
        json.dump(report, f)


def run_multiworker(out_path):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf_keras.utils.set_random_seed(0)
    config = build_config(overrides=OVERRIDES)
    with strategy.scope():
        model = build_detector(config, IMAGE_SIZE)
        model.compile(optimizer=tf_keras.optimizers.SGD(0.01, momentum=0.9))
    # Each worker builds its own pipeline with the static per-replica batch the assignment
    # needs (Keras' automatic sharding of a batched dataset loses the static batch size).
    def per_worker(context):
        batches = tf.data.Dataset.from_tensor_slices(synthetic_batch()).shard(
            context.num_input_pipelines, context.input_pipeline_id)
        batch = context.get_per_replica_batch_size(2)
        return batches.batch(batch, drop_remainder=True).repeat()

    inputs = strategy.distribute_datasets_from_function(per_worker)
    history = model.fit(inputs, epochs=1, steps_per_epoch=3, verbose=0)
    checksum = float(sum(np.sum(np.abs(w)) for w in model.get_weights()))
    report = {"replicas": strategy.num_replicas_in_sync,
              "logs": {k: float(v[-1]) for k, v in history.history.items()},
              "steps": int(model.optimizer.iterations.numpy()), "weight_checksum": checksum}
    with open(out_path, "w") as f:
        json.dump(report, f)


def run_bucketed(strategy, out_path, folder):
    """The Trainer on the orientation-bucketed pipeline of a tiny mixed COCO folder."""
    import pathlib

    from tests.test_buckets import bucketed_trainer, make_mixed_coco

    data = make_mixed_coco(pathlib.Path(folder) / "data")
    trainer = bucketed_trainer(pathlib.Path(folder) / "run", data,
                               "train.total_steps=3,train.checkpoint_every=3",
                               strategy=strategy)
    # Every step: the replicas' batches have one shape (the bucket of the global batch).
    shapes = []
    probe = iter(strategy.distribute_datasets_from_function(trainer_dataset_fn(data)))
    for _ in range(4):
        images = strategy.experimental_local_results(next(probe)["image"])
        shapes.append([list(image.shape) for image in images])
    logs = trainer.train()
    checksum = float(sum(np.sum(np.abs(w)) for w in trainer.model.get_weights()))
    report = {"replicas": strategy.num_replicas_in_sync, "steps": trainer.step,
              "logs": logs, "shapes": shapes, "weight_checksum": checksum,
              "traces": trainer._step_fn.experimental_get_tracing_count()}
    with open(out_path, "w") as f:
        json.dump(report, f)


def run_mirrored_resume(out_path):
    """A 2-replica run of 3 steps on the real input pipeline, straight through and as three
    runs of one step each (each resumed from the previous one's checkpoint)."""
    import pathlib
    import tempfile

    from paa_tf.training import train as train_lib
    from tests import train_utils
    from tests.test_data_bad_input import coco_config, make_coco

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    root = pathlib.Path(tempfile.mkdtemp(dir=os.path.dirname(out_path)))
    make_coco(root / "data", num_images=5)
    data = coco_config(root / "data")
    config = train_utils.tiny_config(
        f"data.train_images={data.train_images},data.train_annotations="
        f"{data.train_annotations},data.min_size=[96,128],data.deterministic=true,"
        "model.num_classes=2,train.checkpoint_every=1")

    def trainer(model_dir):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        return train_lib.Trainer(config, root / model_dir, strategy)

    whole = trainer("whole")
    whole.train(total_steps=3)
    restored = []
    for _ in range(3):
        part = trainer("parts")
        restored.append(part.restore_or_initialise())
        part.train(total_steps=3, stop_after=1)
    differences = [float(np.max(np.abs(a.numpy() - b.numpy())))
                   for a, b in zip(whole.model.weights, part.model.weights)]
    scale = max(float(np.max(np.abs(a.numpy()))) for a in whole.model.weights)
    report = {"replicas": part.strategy.num_replicas_in_sync, "steps": part.step,
              "restored": [os.path.basename(r) if r else None for r in restored],
              "max_weight_difference": max(differences), "max_weight": scale,
              "exact_data_resume": part.exact_data_resume}
    with open(out_path, "w") as f:
        json.dump(report, f)


def trainer_dataset_fn(data):
    from paa_tf.data import pipeline

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(2)
        return pipeline.build_dataset(data, "train", True, batch_size=per_replica,
                                      input_context=context)[0]
    return dataset_fn


def run_bucketed_mirrored(out_path, folder):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    run_bucketed(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), out_path, folder)


def run_bucketed_multiworker(out_path, folder):
    run_bucketed(tf.distribute.MultiWorkerMirroredStrategy(), out_path, folder)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"mirrored": run_mirrored, "multiworker": run_multiworker,
     "bucketed_mirrored": run_bucketed_mirrored,
     "mirrored_resume": run_mirrored_resume,
     "bucketed_multiworker": run_bucketed_multiworker}[mode](out, *sys.argv[3:])
