"""train.init_from a released-layout .pth: converted by the importer, then carried into a
run with other classes (the mmdetection R-50 network of the parity tests, random weights)."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
import torch

from paa_tf import config as config_lib
from paa_tf.convert import coco_categories, importer
from paa_tf.data import label_map as label_map_lib
from paa_tf.modeling import restore
from paa_tf.modeling.weights import _object_paths
from paa_tf.training import train as train_lib
from tests import train_utils
from tests.helpers import torch_references as ref

CLASSES = ("person", "Car", "dog", "widget")  # COCO indices 0, 2, 16; 'widget' is new


def network_paths(model):
    return {p: v.numpy() for p, v in _object_paths(model).items()
            if p.startswith(("backbone/", "fpn/", "head/"))}


@pytest.mark.slow  # three ResNet-50 builds and an import: ~40 s on 2 busy cores
def test_init_from_a_pth_equals_the_imported_run_and_carries_coco_classes(tmp_path, capsys):
    torch.manual_seed(0)
    network = ref.randomize(ref.MMDetPAA(50), seed=21)
    pth = tmp_path / "paa_r50_mmdet.pth"
    torch.save(network.checkpoint(), pth)
    # The oracle: bin/paa_import's own conversion of the same file, restored.
    imported = importer.import_checkpoint(pth, tmp_path / "imported")
    imported_config = config_lib.load_config(tmp_path / "imported" / "config.yaml")
    source = restore.restore_model(imported_config, imported["checkpoint"], (128, 128))

    labels = tmp_path / "labels.json"
    label_map_lib.write_label_map(label_map_lib.from_names(CLASSES), labels)
    config = config_lib.load_config(
        "configs/paa_r50_fpn_1x_coco_mmdet.yaml",
        "data.image_size=[128,128],data.min_size=[128],data.max_size=128,data.max_instances=4,"
        f"data.label_map={labels},model.num_classes=4,train.batch_size=2,train.total_steps=2,"
        f"train.warmup_steps=1,train.lr_steps=[5],train.init_from={pth}")
    trainer = train_lib.Trainer(config, tmp_path / "run", tf.distribute.OneDeviceStrategy(
        "/cpu:0"), dataset_fn=train_utils.dataset_fn_for(2))
    trainer.restore_or_initialise()
    assert "init_scope all_but_classes (auto)" in capsys.readouterr().out
    ours, theirs = network_paths(trainer.model), network_paths(source)
    assert set(ours) == set(theirs) and len(ours) > 300
    for path, value in theirs.items():
        if not path.startswith("head/cls_logits"):
            np.testing.assert_array_equal(ours[path], value, err_msg=path)
    coco = coco_categories.coco_label_map().names
    kernel, bias = ours["head/cls_logits/kernel"], ours["head/cls_logits/bias"]
    for index, name in enumerate(CLASSES[:3]):
        source_index = coco.index(name.lower())
        np.testing.assert_array_equal(kernel[..., index],
                                      theirs["head/cls_logits/kernel"][..., source_index])
        assert bias[index] == theirs["head/cls_logits/bias"][source_index]
    assert bias[3] == pytest.approx(-math.log(99.0), abs=1e-6)
    assert np.abs(kernel[..., 3]).max() < 0.1  # N(0, 0.01), not a COCO channel
    report = json.loads((tmp_path / "run" / "init.json").read_text())
    assert report["kind"] == "pth" and report["import"]["layout"] == "mmdet"
    assert report["classes_carried"] == {"person": "person", "Car": "car", "dog": "dog"}
    assert report["classes_at_prior"] == ["widget"] and report["config_differences"] == {}
