"""The run folder (paa_tf/run_folder.py): the one reader of config.yaml, label_map.json and
the checkpoints of a training run, for every program."""

import pytest

from paa_tf import config as config_lib
from paa_tf import run_folder
from paa_tf.data import label_map as label_map_lib
from paa_tf.modeling.restore import restore_run
from paa_tf.run_folder import RunFolder

SIX = label_map_lib.LabelMap(ids=(1, 3, 5, 7, 9, 11), names=tuple("abcdef"))


def test_num_classes_is_taken_from_the_label_map_when_not_given():
    config = config_lib.load_config()
    assert config.model.num_classes is None  # the default: from the data
    run_folder.check_num_classes(config, SIX, "x.json")
    assert config.model.num_classes == 6


def test_a_num_classes_that_disagrees_names_both_numbers_and_the_key():
    config = config_lib.load_config(overrides="model.num_classes=12")
    with pytest.raises(ValueError, match=r"model.num_classes is 12 but x.json has 6 classes "
                                         r"\(a, b, c, d, e, \.\.\.\)"):
        run_folder.check_num_classes(config, SIX, "x.json")


def test_config_reads_the_run_and_points_at_its_label_map(tmp_path):
    run = RunFolder(tmp_path / "run")
    with pytest.raises(ValueError, match="config.yaml not found: --model_dir must be a "
                                         "training folder"):
        run.config()
    run.write(config_lib.load_config(overrides="model.num_classes=6,eval.batch_size=3"), SIX)
    config = run.config(overrides="eval.batch_size=5")
    assert config.eval.batch_size == 5 and config.model.num_classes == 6
    assert config.data.label_map == str(run.label_map_path)
    assert run.label_map() == SIX
    # A run whose label map no longer matches its config is refused, not half-used.
    label_map_lib.write_label_map(label_map_lib.LabelMap(ids=(1, 2), names=("a", "b")),
                                  run.label_map_path)
    with pytest.raises(ValueError, match=r"model.num_classes is 6 but .*label_map.json has 2"):
        run.config()


def test_checkpoints_are_found_from_index_files_newest_step_first(tmp_path):
    for name in ("ckpt-9.index", "ckpt-10.index", "ckpt-10.data-00000-of-00001",
                 "ckpt-2.data-00000-of-00001", "checkpoint", "ckpt-x.index"):
        (tmp_path / name).write_text("")
    run = RunFolder(tmp_path)
    assert run.checkpoints() == [str(tmp_path / "ckpt-10"), str(tmp_path / "ckpt-9")]
    assert run.has_checkpoint(9) and not run.has_checkpoint(2)
    with pytest.raises(ValueError, match="no checkpoint in .*; train first"):
        restore_run(RunFolder(tmp_path / "empty"), None, (128, 128))
