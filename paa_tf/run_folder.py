"""The training run folder: what `bin/paa_train` and `bin/paa_import` write, and every other
program (`paa_eval`, `paa_predict`, `paa_visualize`, `paa_export`, `paa_ablate`) reads.

Layout of a run folder (`--model_dir`)::

    config.yaml          the resolved experiment config (every key, `model.num_classes` set)
    label_map.json       contiguous class index -> dataset category id and name
    ckpt-<step>.index    a `tf.train.Checkpoint` with `step` and `model` (training adds
    ckpt-<step>.data-*   `optimizer` and the input iterator `data`)
    checkpoint           TensorFlow's list of checkpoints (bookkeeping only, see
                         paa_tf/training/checkpoints.py: checkpoints are found from their
                         index files)
    good_checkpoints.json  which checkpoints a good loss was computed from
                         (paa_tf/training/good_checkpoints.py)
    train.lock           held by the `paa_train` writing the folder (paa_tf/training/run_lock.py)
    diverged-<step>/     checkpoints set aside when a run stopped on a bad loss at that step
    train/               TensorBoard summaries of training
    eval/<split>/        one folder per evaluated split (`eval_dir`): results.json,
                         metrics.json and its TensorBoard summaries; training's periodic
                         evaluation writes eval/val/, `paa_eval` eval/<its split>/

`RunFolder` is the one place that knows this layout; it reads and writes files and needs no
TensorFlow (the ablation report reads many runs). Restoring a model from it is
`paa_tf.modeling.restore.restore_run`.
"""

import os
import pathlib
import re

from paa_tf import config as config_lib
from paa_tf.data import label_map as label_map_lib

CONFIG_FILENAME = "config.yaml"
_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def find_checkpoints(model_dir):
    """Checkpoint prefixes in `model_dir` found from their index files, newest (highest step)
    first: ['run/ckpt-300', 'run/ckpt-280', ...]. Whether each is readable is not checked."""
    model_dir = pathlib.Path(model_dir)
    found = []
    for name in (os.listdir(model_dir) if model_dir.is_dir() else ()):
        match = _INDEX.match(name)
        if match:
            found.append((int(match.group(1)), str(model_dir / f"ckpt-{match.group(1)}")))
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_step(prefix):
    """The step of a `ckpt-<step>` checkpoint prefix ('runs/x/ckpt-250' -> 250; 0 when the
    name holds none)."""
    tail = os.path.basename(os.fspath(prefix)).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def check_num_classes(config, label_map, where):
    """`config` with `model.num_classes` taken from `label_map` when unset; a ValueError naming
    both numbers and the key when they disagree (`where` names the label map's origin)."""
    given = config.model.num_classes
    if given is None:
        config.model.num_classes = label_map.num_classes
    elif given != label_map.num_classes:
        raise ValueError(
            f"model.num_classes is {given} but {where} has {label_map.num_classes} classes "
            f"({', '.join(map(str, label_map.names[:5]))}"
            f"{', ...' if label_map.num_classes > 5 else ''}); remove model.num_classes from "
            f"the config to take it from the label map, or set it to {label_map.num_classes}")
    return config


class RunFolder:
    """One training run folder (see the module docstring).

    Args:
      path: the folder (`--model_dir`); it need not exist yet for `write`.
    """

    def __init__(self, path):
        self.path = pathlib.Path(os.fspath(path))
        self.config_path = self.path / CONFIG_FILENAME
        self.label_map_path = self.path / label_map_lib.LABEL_MAP_FILENAME

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    def has_config(self):
        return self.config_path.is_file()

    def _require_config(self):
        if not self.has_config():
            raise ValueError(f"{self.config_path} not found: --model_dir must be a training "
                             "folder (bin/paa_train writes config.yaml, label_map.json and "
                             "checkpoints there)")

    def config(self, overrides=None, config_path=None):
        """The run's `ExperimentConfig` with dotted `overrides` applied.

        `config_path` reads another experiment file instead of the run's `config.yaml`. When
        the run has a label map, `data.label_map` points at it (the classes the model was
        trained with, whatever data it is then run on) and `model.num_classes` must agree.
        """
        if config_path is None:
            self._require_config()
            config_path = self.config_path
        config = config_lib.load_config(config_path, overrides=overrides)
        if self.label_map_path.is_file():
            config.data.label_map = str(self.label_map_path)
            check_num_classes(config, self.label_map(), str(self.label_map_path))
        return config

    def label_map(self):
        """The run's `LabelMap` (ValueError naming the file when it is missing or bad)."""
        if not self.label_map_path.is_file():
            raise ValueError(f"{self.label_map_path} not found: a run folder holds the label "
                             "map it was trained with (bin/paa_train writes it)")
        return label_map_lib.load_label_map(self.label_map_path)

    def write(self, config, label_map=None):
        """Save the resolved config and the label map (atomic writes; the chief's job)."""
        self.path.mkdir(parents=True, exist_ok=True)
        config_lib.save_config(config, self.config_path)
        if label_map is not None:
            label_map_lib.write_label_map(label_map, self.label_map_path)

    def eval_dir(self, split):
        """Where an evaluation of `split` ('val', 'train', a data folder's name) writes."""
        return self.path / "eval" / split

    def checkpoints(self):
        """Checkpoint prefixes, newest first (`find_checkpoints`)."""
        return find_checkpoints(self.path)

    def has_checkpoint(self, step):
        return (self.path / f"ckpt-{int(step)}.index").is_file()
