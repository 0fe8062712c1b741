"""Backbone initialisation from a local file, with a report of what was loaded.

Supported files (nothing is ever downloaded):

* a TensorFlow object-based checkpoint (Model Garden ImageNet checkpoints, a previous PAA run,
  ``tf.train.Checkpoint(...).write``): a prefix ``.../ckpt-N`` or a directory holding one.
  Variables are matched by their object path below the backbone (``layer_with_weights-3/
  kernel``), whatever the root above it is (``backbone/``, ``model/backbone/``, ...): the
  prefix that matches most variables wins. Each variable is reported as loaded, missing from the
  checkpoint, or present with another shape; checkpoint entries below that prefix that nothing
  used are reported too (optimizer slots aside).
* a Keras weights file (``.h5``, or ``.keras``) written from the same backbone architecture;
  Keras loads it by topology, all or nothing.

A checkpoint that leaves any backbone variable unloaded, gives one another shape, or holds
unused backbone entries is refused (``IncompleteBackboneCheckpoint``, nothing is assigned):
a wrong or partly matching file would otherwise train from a partly random backbone.
``allow_partial=True`` (config ``model.backbone_checkpoint_partial``) loads what matches and
returns the report instead.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import tensorflow as tf
import tf_keras

from paa_tf.modeling.backbone import resnet_inner_model

_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT_MARK = "/.OPTIMIZER_SLOT/"  # optimizer slots stored beside their variable
_SHOWN = 5  # variables named in the refusal message


class IncompleteBackboneCheckpoint(ValueError):
    """A backbone checkpoint that does not initialise exactly the backbone's variables."""


@dataclasses.dataclass
class LoadReport:
    """What ``load_backbone_weights`` did; ``summary()`` is a human-readable version."""

    path: str
    loaded: list = dataclasses.field(default_factory=list)  # object paths
    missing: list = dataclasses.field(default_factory=list)  # 'path (Keras name)', not in file
    shape_mismatch: list = dataclasses.field(default_factory=list)  # (path, ours, file's)
    unused: list = dataclasses.field(default_factory=list)  # file keys nothing matched
    prefix: str = ""

    @property
    def complete(self) -> bool:
        """Every backbone variable loaded and every backbone entry of the file used."""
        return not (self.missing or self.shape_mismatch or self.unused)

    def refusal(self) -> str:
        """Why the load is refused: the first few names of each kind, their counts, the fix."""
        lines = [f"model.backbone_checkpoint {self.path} does not fit the backbone "
                 f"({len(self.loaded)} variables would load"
                 + (f", matched below '{self.prefix}'" if self.prefix else "") + "):"]
        for title, items in (("backbone variables missing from the file", self.missing),
                             ("variables with another shape (ours, file's)",
                              self.shape_mismatch),
                             ("unused file entries below the backbone", self.unused)):
            if items:
                shown = ", ".join(str(item) for item in items[:_SHOWN])
                more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                lines.append(f"  {len(items)} {title}: {shown}{more}")
        lines.append("Give a checkpoint of the same architecture as model.backbone (e.g. Model "
                     "Garden's ImageNet ResNet of that depth), or set "
                     "model.backbone_checkpoint_partial=true to load only what matches.")
        return "\n".join(lines)

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


def _load_tf_checkpoint(roots, path: str, allow_partial: bool) -> LoadReport:
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
    used, to_assign = set(), []
    for obj_path, variable in ours.items():
        key = prefix + obj_path
        label = f"{obj_path} ({variable.name.split(':')[0]})"  # object path (Keras name)
        if key not in shapes and key + _VALUE_SUFFIX not in shapes:
            report.missing.append(label)
            continue
        full_key = key + _VALUE_SUFFIX if key + _VALUE_SUFFIX in shapes else key
        used.add(key)
        file_shape = list(shapes[full_key])
        if file_shape != variable.shape.as_list():
            report.shape_mismatch.append((label, variable.shape.as_list(), file_shape))
            continue
        to_assign.append((variable, full_key))
        report.loaded.append(obj_path)
    # Entries outside the prefix (a classifier, the FPN and head of a detection run, the
    # optimizer) are not backbone weights; those below it that nothing used are.
    report.unused = sorted(k for k in file_keys if k not in used and k.startswith(prefix)
                           and _SLOT_MARK not in k and not k.endswith("save_counter")
                           and not k.startswith("optimizer"))
    if not report.complete and not allow_partial:
        raise IncompleteBackboneCheckpoint(report.refusal())
    for variable, full_key in to_assign:
        variable.assign(tf.cast(reader.get_tensor(full_key), variable.dtype))
    return report


def load_backbone_weights(backbone: tf_keras.Model, path: str,
                          allow_partial: bool = False) -> LoadReport:
    """Initialises ``backbone`` (built) from the local file ``path``; see the module docstring.

    Args:
      allow_partial: load what matches even when the file does not cover the backbone
        exactly (``model.backbone_checkpoint_partial``); the report lists the rest.
    Returns:
      LoadReport. Raises ValueError when the file does not exist or a Keras file does not fit,
      and ``IncompleteBackboneCheckpoint`` (nothing assigned) when a TensorFlow checkpoint
      does not cover the backbone exactly and ``allow_partial`` is False.
    """
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
    return _load_tf_checkpoint(roots, path, allow_partial)
