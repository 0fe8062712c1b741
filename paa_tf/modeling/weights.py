"""Backbone initialisation from a local file, with a report of what was loaded.

Supported files (nothing is ever downloaded):

* a TensorFlow object-based checkpoint (Model Garden ImageNet checkpoints, a previous PAA run,
  ``tf.train.Checkpoint(...).write``): a prefix ``.../ckpt-N`` or a directory holding one.
  Variables are matched by their object path below the backbone (``layer_with_weights-3/
  kernel``), whatever the root above it is (``backbone/``, ``model/backbone/``, ...): the
  prefix that matches most variables wins. Each variable is reported as loaded, missing from the
  checkpoint, or present with another shape (kept at its initial value).
* a Keras weights file (``.h5``, or ``.keras``) written from the same backbone architecture;
  Keras loads it by topology, all or nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import tensorflow as tf
import tf_keras

_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass
class LoadReport:
    """What ``load_backbone_weights`` did; ``summary()`` is a human-readable version."""

    path: str
    loaded: list = dataclasses.field(default_factory=list)  # object paths
    missing: list = dataclasses.field(default_factory=list)  # ours, absent from the file
    shape_mismatch: list = dataclasses.field(default_factory=list)  # (path, ours, file's)
    unused: list = dataclasses.field(default_factory=list)  # file keys nothing matched
    prefix: str = ""

    def summary(self, max_items: int = 10) -> str:
        lines = [f"backbone weights from {self.path}: {len(self.loaded)} variables loaded, "
                 f"{len(self.missing)} missing, {len(self.shape_mismatch)} with another shape, "
                 f"{len(self.unused)} file entries unused"
                 + (f" (matched below '{self.prefix}')" if self.prefix else "")]
        for title, items in (("missing", self.missing), ("shape mismatch", self.shape_mismatch),
                             ("unused", self.unused)):
            for item in items[:max_items]:
                lines.append(f"  {title}: {item}")
            if len(items) > max_items:
                lines.append(f"  ... and {len(items) - max_items} more {title}")
        return "\n".join(lines)


def _object_paths(root) -> dict:
    """{object path: tf.Variable} below ``root``, named as a checkpoint of ``root`` names them.

    Breadth-first, first path wins: the same rule the object-graph checkpoint uses.
    """
    view = tf.train.TrackableView(root)
    paths = {}
    seen = {id(root)}
    queue = collections.deque([("", root)])
    while queue:
        prefix, obj = queue.popleft()
        for name, child in view.children(obj).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{name}"
            if isinstance(child, tf.Variable):
                paths[path] = child
            else:
                queue.append((f"{path}/", child))
    return paths


def _resolve_checkpoint(path: str) -> str:
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise ValueError(f"model.backbone_checkpoint: directory {path} holds no TensorFlow "
                             "checkpoint (no 'checkpoint' file); give the ckpt-N prefix")
        return latest
    if os.path.exists(path + ".index"):
        return path
    raise ValueError(
        f"model.backbone_checkpoint: {path} not found. Give a local TensorFlow checkpoint prefix "
        "(the path without '.index'), a directory holding one, or a Keras .h5/.keras weights "
        "file; nothing is downloaded at run time")


def _best_prefix(file_keys, our_paths) -> str:
    """The key prefix under which the most of ``our_paths`` appear among ``file_keys``."""
    counts = collections.Counter()
    for key in file_keys:
        parts = key.split("/")
        for start in range(len(parts)):
            if "/".join(parts[start:]) in our_paths:
                counts["/".join(parts[:start]) + ("/" if start else "")] += 1
    return counts.most_common(1)[0][0] if counts else ""


def _load_tf_checkpoint(roots, path: str) -> LoadReport:
    prefix_path = _resolve_checkpoint(path)
    reader = tf.train.load_checkpoint(prefix_path)
    shapes = reader.get_variable_to_shape_map()
    file_keys = [k[:-len(_VALUE_SUFFIX)] for k in shapes if k.endswith(_VALUE_SUFFIX)]
    key_set = set(file_keys)
    best = None
    for root in roots:
        ours = _object_paths(root)
        prefix = _best_prefix(file_keys, ours)
        matched = sum(1 for p in ours if prefix + p in key_set)
        if best is None or matched > best[0]:
            best = (matched, ours, prefix)
    _, ours, prefix = best
    report = LoadReport(path=prefix_path, prefix=prefix)
    used = set()
    for obj_path, variable in ours.items():
        key = prefix + obj_path
        if key not in shapes and key + _VALUE_SUFFIX not in shapes:
            report.missing.append(obj_path)
            continue
        full_key = key + _VALUE_SUFFIX if key + _VALUE_SUFFIX in shapes else key
        used.add(key)
        file_shape = list(shapes[full_key])
        if file_shape != variable.shape.as_list():
            report.shape_mismatch.append((obj_path, variable.shape.as_list(), file_shape))
            continue
        variable.assign(tf.cast(reader.get_tensor(full_key), variable.dtype))
        report.loaded.append(obj_path)
    report.unused = sorted(k for k in file_keys if k not in used and
                           not k.endswith("save_counter") and not k.startswith("optimizer"))
    return report


def load_backbone_weights(backbone: tf_keras.Model, path: str) -> LoadReport:
    """Initialises ``backbone`` (built) from the local file ``path``; see the module docstring.

    Returns:
      LoadReport. Raises ValueError when the file does not exist or a Keras file does not fit.
    """
    from paa_tf.modeling.backbone import resnet_inner_model

    path = os.fspath(path)
    if path.endswith((".h5", ".keras")):
        if not os.path.isfile(path):
            raise ValueError(f"model.backbone_checkpoint: Keras weights file {path} not found; "
                             "nothing is downloaded at run time")
        try:
            backbone.load_weights(path)
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"model.backbone_checkpoint: {path} does not fit the '{backbone.name}' "
                f"architecture ({error}); Keras weight files load by topology, so they must be "
                "written from the same backbone") from error
        return LoadReport(path=path, loaded=sorted(_object_paths(backbone)))
    roots = [backbone]
    inner = resnet_inner_model(backbone)
    if inner is not None:
        roots.insert(0, inner)
    return _load_tf_checkpoint(roots, path)
