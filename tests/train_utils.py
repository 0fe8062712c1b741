"""Small in-memory training set-up shared by the training tests."""

import numpy as np
import tensorflow as tf

from paa_tf import config as config_lib

IMAGE = 128


def tiny_config(model_dir_overrides=""):
    """Quickstart config shrunk to a 128x128 input, 3 classes and a batch of 2."""
    overrides = ("data.image_size=[128,128],data.min_size=[128],data.max_size=128,"
                 "data.max_instances=4,model.num_classes=3,model.fpn_channels=32,"
                 "model.head_channels=32,model.head_convs=1,train.batch_size=2,"
                 "train.total_steps=6,train.warmup_steps=4,train.lr_steps=[5],"
                 "train.checkpoint_every=2,train.log_every=1,train.base_lr=0.005")
    if model_dir_overrides:
        overrides += "," + model_dir_overrides
    return config_lib.load_config("configs/quickstart.yaml", overrides)


def batches(seed=0, count=64):
    """Deterministic images with two boxes each: dict batches of 1 image (per replica 1)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, IMAGE, IMAGE, 3)).astype(np.float32)
    boxes = np.full((count, 4, 4), -1.0, np.float32)
    classes = np.full((count, 4), -1, np.int32)
    boxes[:, 0] = [10, 12, 60, 70]
    boxes[:, 1] = [64, 40, 120, 100]
    classes[:, 0] = 0
    classes[:, 1] = 2
    for i in range(count):  # paint the objects so there is something to learn
        for box in boxes[i, :2].astype(int):
            images[i, box[0]:box[2], box[1]:box[3]] += 2.0
    return {"image": images, "gt_boxes": boxes, "gt_classes": classes,
            "image_info": np.tile(np.array([[IMAGE, IMAGE], [IMAGE, IMAGE], [1, 1], [0, 0]],
                                           np.float32), (count, 1, 1)),
            "source_id": np.arange(count, dtype=np.int64)}


def dataset_fn_for(global_batch, seed=0):
    data = batches(seed)

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch)
        dataset = tf.data.Dataset.from_tensor_slices(data).repeat()
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
        return dataset.batch(per_replica, drop_remainder=True)
    return dataset_fn
