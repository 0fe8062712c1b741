"""Assigning a reference checkpoint to a built paa-tf model, all or nothing.

Every variable of the model's backbone, FPN and head must come from exactly one checkpoint
key (or be a value the reference does not have, named in ``layouts``), and every key of the
file must be loaded or be a known non-weight (``Layout.ignored``). Anything else — a key
paa-tf does not know, a weight the file lacks, a shape that differs — is a
``CheckpointError`` naming the key, and nothing is assigned.
"""

from __future__ import annotations

import numpy as np

from paa_tf.convert.layouts import LAYOUTS, Target, convert
from paa_tf.convert.torch_file import CheckpointError
from paa_tf.modeling.deform_conv import ModulatedDeformConv2D

_MAX_LISTED = 12


def _param(variable):
    return variable.name.split("/")[-1].split(":")[0]


def _targets(part, layer):
    deformable = isinstance(layer, ModulatedDeformConv2D)
    return [(Target(part, layer.name, _param(variable), deformable), variable)
            for variable in layer.weights]


def model_targets(model, parts=("backbone", "fpn", "head")) -> list:
    """[(Target, tf.Variable)] for the variables of a ``PAADetector`` (or of a backbone).

    ``model`` is a PAADetector, or a bare backbone ``tf_keras.Model`` when ``parts`` is
    ('backbone',).
    """
    pairs = []
    backbone = getattr(model, "backbone", model)
    if "backbone" in parts:
        for layer in backbone.layers:
            pairs += _targets("backbone", layer)
    if "fpn" in parts:
        fpn = model.fpn
        for group in (fpn.laterals, fpn.output_convs, fpn.extra_convs):
            for layer in group.values():
                pairs += _targets("fpn", layer)
    if "head" in parts:
        head = model.head
        layers = [*head.cls_tower, *head.box_tower, head.cls_logits, head.bbox_pred]
        if head.aux_pred is not None:
            layers.append(head.aux_pred)
        for layer in layers:
            pairs += _targets("head", layer)
        # Both references index their per-level scales from 0 at the lowest level.
        for index, variable in enumerate(head.scales):
            pairs.append((Target("head", f"scales_{index}", "scale"), variable))
    return pairs


def _listing(items):
    shown = "\n  ".join(items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {shown}{more}"


def load_strict(model, state: dict, layout_name: str, source_name: str = "checkpoint",
                parts=None) -> dict:
    """Assign ``state`` (checkpoint key -> NumPy array) to ``model``; see the module docstring.

    Args:
      model: a built PAADetector (or a backbone model with ``parts=('backbone',)``).
      state: from ``torch_file.read_state_dict``.
      layout_name: 'mmdet' | 'authors' | 'imagenet'.
      source_name: the file, for messages.
    Returns:
      {'loaded': n, 'filled': [paths set to a value the reference lacks],
       'ignored': {key: reason}}.
    Raises:
      CheckpointError naming every missing, unknown/unused and mismatched key.
    """
    layout = LAYOUTS[layout_name]
    parts = parts or layout.parts
    pairs = model_targets(model, parts)
    plan, missing, mismatched, filled = [], [], [], []
    used = set()
    for target, variable in pairs:
        source = layout.source(target)
        if source.key is None:
            plan.append((variable, np.zeros(variable.shape, np.float32)))
            filled.append(f"{target.path}: {source.note}")
            continue
        if source.key not in state:
            missing.append(f"'{source.key}' (for {target.path})")
            continue
        if source.key in used:
            raise CheckpointError(f"{source_name}: key '{source.key}' would feed two variables")
        used.add(source.key)
        value = convert(state[source.key], source.kind)
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"'{source.key}': shape {list(state[source.key].shape)} gives "
                              f"{list(value.shape)} but {target.path} is "
                              f"{variable.shape.as_list()}")
            continue
        plan.append((variable, value))
    ignored, unknown = {}, []
    for key in sorted(state):
        if key in used:
            continue
        reason = layout.ignored(key)
        if reason is None:
            unknown.append(f"'{key}' {list(state[key].shape)}")
        else:
            ignored[key] = reason
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights the model needs are missing from the file:"
                        + _listing(missing))
    if mismatched:
        problems.append(f"{len(mismatched)} keys have another shape than the model built from "
                        "the config (check model.backbone, num_classes, fpn_channels, "
                        "head_channels, head_convs):" + _listing(mismatched))
    if unknown:
        problems.append(f"{len(unknown)} keys of the file are not used by the {layout_name} "
                        "layout (another architecture than the config's, e.g. "
                        "model.backbone_dcn_stages or model.head_dcn, or another source: see "
                        "--source):" + _listing(unknown))
    if problems:
        raise CheckpointError(f"{source_name} does not fit the paa-tf model "
                              f"({layout_name} layout); nothing was loaded.\n"
                              + "\n".join(problems))
    for variable, value in plan:
        variable.assign(value.astype(variable.dtype.as_numpy_dtype))
    return {"loaded": len(plan) - len(filled), "filled": filled, "ignored": ignored}


def check_cell_anchors(state: dict, model, source_name="checkpoint"):
    """The authors' ``cell_anchors`` buffers must equal paa-tf's anchor at cell (0, 0).

    Each buffer is the level's base anchor (x1, y1, x2, y2) before it is shifted by
    (j·s, i·s); paa-tf's first anchor of the level (yxyx) is that same box. A difference means
    another anchor size, offset or pixel convention than the config's.
    """
    anchors = np.asarray(model.anchors)
    starts = np.concatenate([[0], np.cumsum(np.bincount(model.level_ids))])[:-1]
    for index, start in enumerate(starts):
        key = f"rpn.anchor_generator.cell_anchors.{index}"
        if key not in state:
            continue
        ours = anchors[start][[1, 0, 3, 2]]
        theirs = np.asarray(state[key], np.float64).reshape(-1, 4)
        if theirs.shape[0] != 1 or not np.allclose(theirs[0], ours, atol=1e-3):
            raise CheckpointError(
                f"{source_name}: '{key}' = {theirs.tolist()} but the config's anchors give "
                f"{ours.tolist()} (x1, y1, x2, y2) at level {index}; check "
                "model.octave_base_scale, anchor_center_offset and plus_one")
