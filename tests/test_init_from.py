"""train.init_from / init_scope / init_class_map: a fresh run started from another detector."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.data import label_map as label_map_lib
from paa_tf.modeling.weights import _object_paths
from paa_tf.training import init_from
from paa_tf.training import train as train_lib
from tests import train_utils
from tests.test_presets import CONFIGS, MMDET

SOURCE_CLASSES = ("circle", "square", "triangle")


def make_trainer(model_dir, classes, overrides="", label_dir=None):
    """A tiny trainer whose classes are `classes` (a label map file beside the run)."""
    label_path = (label_dir or model_dir).parent / f"labels_{model_dir.name}.json"
    label_map_lib.write_label_map(label_map_lib.from_names(classes), label_path)
    config = train_utils.tiny_config(
        f"data.label_map={label_path},model.num_classes={len(classes)}"
        + ("," + overrides if overrides else ""))
    return train_lib.Trainer(config, model_dir, tf.distribute.OneDeviceStrategy("/cpu:0"),
                             dataset_fn=train_utils.dataset_fn_for(config.train.batch_size))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A source run trained 2 steps (so no weight sits at its initial value)."""
    folder = tmp_path_factory.mktemp("init") / "source"
    trainer = make_trainer(folder, SOURCE_CLASSES)
    trainer.train(total_steps=2)
    return trainer


def images():
    return tf.constant(train_utils.batches(seed=5, count=2)["image"])


def by_path(model):
    return {path: variable.numpy() for path, variable in _object_paths(model).items()
            if path.startswith(("backbone/", "fpn/", "head/"))}  # not the optimizer's


def test_scope_all_from_a_run_with_the_same_classes_gives_the_source_outputs(source, tmp_path,
                                                                            capsys):
    trainer = make_trainer(tmp_path / "run", SOURCE_CLASSES,
                           f"train.init_from={source.model_dir}")
    fresh = {k: v.copy() for k, v in by_path(trainer.model).items()}
    assert trainer.restore_or_initialise() is None
    out = capsys.readouterr().out
    assert "init_scope all (auto)" in out and "ckpt-2" in out
    x = images()
    ours, theirs = trainer.model(x), source.model(x)
    for name in theirs:
        np.testing.assert_array_equal(ours[name].numpy(), theirs[name].numpy())
    # The oracle is not vacuous: the source's weights differ from a fresh initialisation.
    assert not np.array_equal(fresh["head/cls_logits/kernel"],
                              by_path(source.model)["head/cls_logits/kernel"])
    report = json.loads((tmp_path / "run" / "init.json").read_text())
    assert report["scope"] == "all" and report["scope_requested"] == "auto"
    assert report["variables_loaded"] == len(trainer.model.weights)
    assert report["variables_kept_initialisation"] == 0
    assert report["classes_carried"] == {n: n for n in SOURCE_CLASSES}
    assert report["checkpoint"].endswith("ckpt-2")


def test_other_classes_keep_the_shared_channels_and_start_the_rest_at_the_prior(source,
                                                                                tmp_path):
    classes = ("Square", "hexagon", "circle", "star")  # 'Square': matched case-insensitively
    trainer = make_trainer(tmp_path / "run", classes, f"train.init_from={source.model_dir}")
    # The same config without init_from: the head's own initialisation of every channel.
    plain = make_trainer(tmp_path / "plain", classes)
    trainer.restore_or_initialise()
    ours, theirs, init = by_path(trainer.model), by_path(source.model), by_path(plain.model)
    kernel, bias = ours["head/cls_logits/kernel"], ours["head/cls_logits/bias"]
    for new, old in ((0, 1), (2, 0)):  # Square <- square, circle <- circle
        np.testing.assert_array_equal(kernel[..., new], theirs["head/cls_logits/kernel"][..., old])
        assert bias[new] == theirs["head/cls_logits/bias"][old]
    prior = -math.log((1 - 0.01) / 0.01)
    for new in (1, 3):
        np.testing.assert_array_equal(kernel[..., new], init["head/cls_logits/kernel"][..., new])
        assert bias[new] == pytest.approx(prior, abs=1e-6)
    assert theirs["head/cls_logits/bias"][0] != pytest.approx(prior, abs=1e-4)  # it trained
    for path, value in theirs.items():  # everything else is the source's
        if not path.startswith("head/cls_logits"):
            np.testing.assert_array_equal(ours[path], value, err_msg=path)
    # So the first forward pass gives the source's logits for the shared classes.
    x = images()
    got, want = trainer.model(x), source.model(x)
    np.testing.assert_array_equal(got["cls_logits"].numpy()[..., [0, 2]],
                                  want["cls_logits"].numpy()[..., [1, 0]])
    np.testing.assert_array_equal(got["box_deltas"].numpy(), want["box_deltas"].numpy())
    report = json.loads((tmp_path / "run" / "init.json").read_text())
    assert report["scope"] == "all_but_classes"
    assert report["variables_loaded"] == len(trainer.model.weights) - 2  # all but the conv's
    assert report["variables_loaded_for_shared_classes_only"] == 2  # kernel and bias
    assert report["classes_carried"] == {"Square": "square", "circle": "circle"}
    assert report["classes_at_prior"] == ["hexagon", "star"]


def test_class_map_adds_pairs_and_scope_all_refuses_other_classes(source, tmp_path):
    classes = ("circle", "hexagon", "square")
    trainer = make_trainer(tmp_path / "run", classes, f"train.init_from={source.model_dir},"
                           "train.init_class_map={hexagon: Triangle}")
    trainer.restore_or_initialise()
    # circle <- circle, hexagon <- triangle, square <- square: the source's channels 0, 2, 1.
    np.testing.assert_array_equal(by_path(trainer.model)["head/cls_logits/kernel"],
                                  by_path(source.model)["head/cls_logits/kernel"][..., [0, 2, 1]])
    # Every class mapped: auto is 'all'.
    assert json.loads((tmp_path / "run" / "init.json").read_text())["scope"] == "all"
    refused = make_trainer(tmp_path / "other", ("circle", "hexagon", "square"),
                           f"train.init_from={source.model_dir},train.init_scope=all")
    with pytest.raises(init_from.InitError, match="hexagon have no source class"):
        refused.restore_or_initialise()
    bad = make_trainer(tmp_path / "bad", classes, f"train.init_from={source.model_dir},"
                       "train.init_class_map={hexagon: pentagon}")
    with pytest.raises(init_from.InitError, match="'pentagon' .* not a class of the source"):
        bad.restore_or_initialise()


def test_a_reshaped_or_missing_variable_in_scope_is_refused_by_name_and_nothing_trains(
        source, tmp_path):
    for overrides, message in (
            # 2 towers x (conv kernel, bias, GroupNorm gamma, beta) + the 3 output kernels.
            ("model.head_channels=64", r"11 variables with another shape: head/cls_logits/"
                                       r"kernel \(paa_detector/paa_head/cls_logits/kernel\): "
                                       r"ours \[3, 3, 64, 3\], checkpoint \[3, 3, 32, 3\], "
                                       r".*\(6 more\)"),
            # The second (conv, GroupNorm, ReLU) of each tower: 2 x 4 variables.
            ("model.head_convs=2", r"8 variables missing from the checkpoint: "
                                   r"head/cls_tower/3/kernel")):
        folder = tmp_path / overrides.split("=")[0].split(".")[1]
        trainer = make_trainer(folder, SOURCE_CLASSES,
                               f"train.init_from={source.model_dir},{overrides}")
        before = [v.numpy().copy() for v in trainer.model.weights]
        with pytest.raises(init_from.InitError, match=message):
            trainer.restore_or_initialise()
        for value, variable in zip(before, trainer.model.weights):  # nothing was assigned
            np.testing.assert_array_equal(value, variable.numpy())
        assert not list(folder.glob("ckpt-*")) and not (folder / "init.json").exists()
        assert trainer.step == 0
    # A head of another size is outside init_scope=backbone_fpn: that loads.
    trainer = make_trainer(tmp_path / "fpn", SOURCE_CLASSES,
                           f"train.init_from={source.model_dir},model.head_channels=64,"
                           "train.init_scope=backbone_fpn")
    trainer.restore_or_initialise()
    ours, theirs = by_path(trainer.model), by_path(source.model)
    assert all(np.array_equal(ours[p], v) for p, v in theirs.items()
               if p.startswith(("backbone/", "fpn/")))
    report = json.loads((tmp_path / "fpn" / "init.json").read_text())
    assert report["outside_scope"] == ["head"] and report["classes_carried"] == {}


def test_a_resumed_run_does_not_reinitialise_and_its_own_folder_is_refused(source, tmp_path,
                                                                           capsys):
    run = tmp_path / "run"
    first = make_trainer(run, SOURCE_CLASSES, f"train.init_from={source.model_dir}")
    first.restore_or_initialise()
    # What training would do, without its cost: the run's weights move away from the
    # source's, and a checkpoint of them is saved (ckpt-0).
    first.model.head.bbox_pred.kernel.assign(tf.zeros_like(first.model.head.bbox_pred.kernel))
    first.keeper.save()
    trained = by_path(first.model)
    capsys.readouterr()
    second = make_trainer(run, SOURCE_CLASSES, f"train.init_from={source.model_dir}")
    assert second.restore_or_initialise().endswith("ckpt-0")
    out = capsys.readouterr().out
    assert "Resumed from" in out and "Initialised from" not in out
    for path, value in by_path(second.model).items():
        np.testing.assert_array_equal(value, trained[path], err_msg=path)
    # The run's own weights differ from the source's: a re-initialisation would show.
    assert not np.array_equal(trained["head/bbox_pred/kernel"],
                              by_path(source.model)["head/bbox_pred/kernel"])
    again = make_trainer(run, SOURCE_CLASSES, f"train.init_from={run}")
    with pytest.raises(init_from.InitError, match="this run's own folder"):
        again.restore_or_initialise()  # refused although the run would resume
    with pytest.raises(init_from.InitError, match="this run's own folder or checkpoint"):
        init_from.refuse_own_run(run / "ckpt-0", run)


def test_a_checkpoint_prefix_is_a_source_and_a_bad_path_is_named(source, tmp_path):
    prefix = source.model_dir / "ckpt-2"
    trainer = make_trainer(tmp_path / "run", SOURCE_CLASSES, f"train.init_from={prefix}")
    trainer.restore_or_initialise()
    assert json.loads((tmp_path / "run" / "init.json").read_text())["kind"] == "checkpoint"
    missing = make_trainer(tmp_path / "x", SOURCE_CLASSES,
                           f"train.init_from={tmp_path / 'nothing'}")
    with pytest.raises(init_from.InitError, match="nothing not found: give a run folder"):
        missing.restore_or_initialise()


def test_the_fine_tuning_preset_keeps_every_switch_of_the_imported_network():
    preset = config_lib.load_config(CONFIGS / "paa_r50_fpn_finetune_mmdet.yaml")
    source = config_lib.load_config(CONFIGS / "paa_r50_fpn_1x_coco_mmdet.yaml")
    for key in list(MMDET) + list(init_from._SEMANTIC_KEYS):
        section, name = key.split(".")
        assert getattr(getattr(preset, section), name) == getattr(getattr(source, section),
                                                                  name), key
    assert preset.train.init_from.endswith(".pth") and preset.train.init_scope == "auto"
    assert preset.model.num_classes is None and preset.data.max_instances is None
    assert preset.model.backbone_checkpoint is None
