"""A fresh training run's start from another detector: `train.init_from` / `init_scope`.

The source is a paa-tf run folder (a training run or a `bin/paa_import` output: its newest
readable checkpoint), a checkpoint prefix of one (`runs/x/ckpt-2000`; the folder holding it
gives the config and label map), or a released PyTorch `.pth` of a detector, converted first
by `paa_tf.convert.importer` with every check of `bin/paa_import` (into a temporary run
folder).

Variables are matched by their object path in the model (`backbone/layer_with_weights-3/
kernel`, `head/cls_logits/bias`: the names of a `tf.train.Checkpoint(model=...)`), within
the scope:

  all              every variable; the classes must be the source's (by name, any order)
  all_but_classes  every variable but the classification conv (backbone, FPN, both towers,
                   the box and IoU branches, the per-level scales); of that conv only the
                   output channels of classes the source also has are copied
  backbone_fpn     the backbone and the FPN
  backbone         the backbone

`auto` (the default) is `all` when every class has a source class and the counts agree,
else `all_but_classes`. Within the scope the load is strict: a variable the checkpoint lacks,
one of another shape, or a checkpoint entry of the scope's parts that nothing uses (another
architecture) stops the run before anything is assigned, naming the first few and the count.
Outside the scope, and for the class channels without a source class, variables keep their
initialisation (`paa_tf.modeling.head`: N(0, 0.01) kernel, bias -log((1 - p) / p)).

Classes are carried by name (case-insensitive); `train.init_class_map` adds or overrides
`new_name: source_name` pairs. The result is printed and written to `<run>/init.json`
(source, checkpoint, scope, counts, class mapping).
"""

import json
import os
import pathlib
import tempfile

import numpy as np
import tensorflow as tf

from paa_tf import run_folder
from paa_tf.data import label_map as label_map_lib
from paa_tf.modeling.restore import NoReadableCheckpoint, restore_newest
from paa_tf.modeling.weights import _SLOT_MARK, _VALUE_SUFFIX, _object_paths

INIT_FILENAME = "init.json"
SCOPE_PARTS = {"all": ("backbone", "fpn", "head"), "all_but_classes": ("backbone", "fpn", "head"),
               "backbone_fpn": ("backbone", "fpn"), "backbone": ("backbone",)}
CLASS_VARIABLES = ("head/cls_logits/kernel", "head/cls_logits/bias")  # last axis = classes
_SHOWN = 5  # variables named in a refusal
# Settings that change what the same weights compute: a source trained with other values
# loads but computes something else; named in a warning and in init.json.
_SEMANTIC_KEYS = ("model.backbone_style", "model.bn_epsilon", "model.input_channels",
                  "model.p7_from_relu", "model.anchor_center_offset", "model.plus_one",
                  "model.octave_base_scale", "model.box_weights", "model.aux_head",
                  "model.delta_clamp", "data.pixel_mean", "data.pixel_std")


class InitError(ValueError):
    """`train.init_from` cannot initialise the model (bad source, or it does not fit)."""


def _listing(items):
    shown = ", ".join(str(item) for item in items[:_SHOWN])
    return shown + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def _readable_checkpoint(folder):
    """The newest checkpoint prefix of `folder` that TensorFlow can open, or None (the
    fallback every reader of a run folder follows, `restore_newest`)."""
    try:
        path, _ = restore_newest(run_folder.find_checkpoints(folder), tf.train.load_checkpoint)
    except NoReadableCheckpoint:
        return None
    return path


def _same_folder(a, b):
    return pathlib.Path(a).resolve() == pathlib.Path(b).resolve()


def refuse_own_run(init_from, model_dir):
    """InitError when `init_from` is the run folder `model_dir` or one of its checkpoints."""
    path = os.fspath(init_from)
    if os.path.isdir(path):
        folder = path
    elif os.path.isfile(path + ".index"):  # a checkpoint prefix
        folder = os.path.dirname(os.path.abspath(path))
    else:
        return  # a .pth, or a path resolve_source reports as not found
    if _same_folder(folder, model_dir):
        raise InitError(f"train.init_from names this run's own folder or checkpoint ({path}): "
                        "a run continues from its own checkpoints by itself; give another run")


def resolve_source(init_from, model_dir, scratch):
    """(kind, source run folder, checkpoint prefix, import report or None) of `init_from`.

    kind: 'run folder' | 'checkpoint' | 'pth'. A `.pth` is imported into `scratch`.
    Raises InitError for a path that is none of these, or names the run's own folder.
    """
    path = os.fspath(init_from)
    if path.endswith(".pth"):
        if not os.path.isfile(path):
            raise InitError(f"train.init_from: {path} not found (nothing is downloaded at run "
                            "time; fetch the released file first)")
        # The importer (and torch) only for a .pth source.
        from paa_tf.convert import importer

        report = importer.import_checkpoint(path, os.path.join(scratch, "imported"))
        if report["layout"] == "imagenet":
            raise InitError(f"train.init_from: {path} is an ImageNet classifier, not a "
                            "detector; convert it with bin/paa_import and give it as "
                            "model.backbone_checkpoint")
        folder = os.path.join(scratch, "imported")
        return "pth", folder, report["checkpoint"], report
    refuse_own_run(path, model_dir)
    if os.path.isdir(path):
        folder = run_folder.RunFolder(path)
        if not folder.has_config():
            raise InitError(f"train.init_from: {path} is not a run folder (no config.yaml); "
                            "give a bin/paa_train or bin/paa_import folder, a checkpoint "
                            "prefix (runs/x/ckpt-2000) or a released .pth")
        checkpoint = _readable_checkpoint(path)
        if checkpoint is None:
            raise InitError(f"train.init_from: {path} holds no readable checkpoint")
        return "run folder", path, checkpoint, None
    if os.path.isfile(path + ".index"):
        parent = os.path.dirname(os.path.abspath(path))
        try:
            tf.train.load_checkpoint(path)
        except Exception as error:  # noqa: BLE001  (damaged: named with the reason)
            raise InitError(f"train.init_from: checkpoint {path} cannot be read "
                            f"({type(error).__name__}); give another one") from None
        return "checkpoint", parent, path, None
    raise InitError(f"train.init_from: {path} not found: give a run folder, a checkpoint "
                    "prefix (the path without '.index', e.g. runs/x/ckpt-2000) or a .pth file")


def class_mapping(target, source, overrides=None):
    """{target index: source index} of the classes carried over, by name (case-insensitive)
    and `overrides` ({new name: source name}, which wins). Raises InitError for an override
    naming a class that one side lacks."""
    by_name = {}
    for index, name in enumerate(source.names):
        by_name.setdefault(str(name).lower(), index)
    target_index = {str(name).lower(): index for index, name in enumerate(target.names)}
    mapping = {t: by_name[str(name).lower()] for t, name in enumerate(target.names)
               if str(name).lower() in by_name}
    for new, old in (overrides or {}).items():
        if new.lower() not in target_index:
            raise InitError(f"train.init_class_map: '{new}' is not a class of this run "
                            f"({_listing(list(target.names))})")
        if old.lower() not in by_name:
            raise InitError(f"train.init_class_map: '{old}' (for '{new}') is not a class of "
                            f"the source model ({_listing(list(source.names))})")
        mapping[target_index[new.lower()]] = by_name[old.lower()]
    return mapping


def _resolve_scope(requested, mapping, target, source):
    complete = (target is not None and source is not None and len(mapping) == target.num_classes
                and target.num_classes == source.num_classes)
    if requested == "auto":
        return "all" if complete else "all_but_classes"
    if requested == "all" and not complete:
        missing = [target.names[i] for i in range(target.num_classes) if i not in mapping] \
            if target is not None else []
        raise InitError(
            "train.init_scope=all needs the source's classes: "
            + (f"{_listing(missing)} have no source class; " if missing else "")
            + (f"this run has {target.num_classes} classes and the source "
               f"{source.num_classes}; " if target and source else "a label map is missing; ")
            + "use all_but_classes (the default when the classes differ) or "
            "train.init_class_map")
    return requested


def plan(model, reader, scope, mapping, num_source_classes):
    """[(variable, value)] to assign and a summary; InitError (nothing assigned) when the
    checkpoint of `reader` does not fit `model` within `scope`."""
    shapes = reader.get_variable_to_shape_map()
    parts = SCOPE_PARTS[scope]
    # The network's variables (a compiled model also tracks its optimizer: not weights).
    ours = {path: variable for path, variable in _object_paths(model).items()
            if path.split("/")[0] in SCOPE_PARTS["all"]}
    assignments, missing, reshaped, used = [], [], [], set()
    outside, class_channels = [], 0
    for path, variable in ours.items():
        if path.split("/")[0] not in parts:
            outside.append(path)
            continue
        key = f"model/{path}{_VALUE_SUFFIX}"
        label = f"{path} ({variable.name.split(':')[0]})"
        if key not in shapes:
            missing.append(label)
            continue
        used.add(key)
        shape, theirs = variable.shape.as_list(), list(shapes[key])
        partial = path in CLASS_VARIABLES and scope == "all_but_classes"
        if path in CLASS_VARIABLES and theirs[-1:] != [num_source_classes]:
            reshaped.append(f"{label}: {theirs} in the checkpoint, but its label map has "
                            f"{num_source_classes} classes")
            continue
        if (shape[:-1] != theirs[:-1]) if partial else (shape != theirs):
            reshaped.append(f"{label}: ours {shape}, checkpoint {theirs}")
            continue
        value = reader.get_tensor(key)
        if path in CLASS_VARIABLES:
            # Class channels of the source in this run's order (all) or only the shared ones.
            new = variable.numpy().copy()
            targets = sorted(mapping)
            new[..., targets] = value[..., [mapping[t] for t in targets]]
            value = new
            class_channels = len(targets)
        assignments.append((variable, value))
    unused = sorted(k[len("model/"):-len(_VALUE_SUFFIX)] for k in shapes
                    if k.startswith("model/") and k.endswith(_VALUE_SUFFIX) and k not in used
                    and _SLOT_MARK not in k and k.split("/")[1] in parts)
    problems = []
    if missing:
        problems.append(f"{len(missing)} variables missing from the checkpoint: "
                        f"{_listing(missing)}")
    if reshaped:
        problems.append(f"{len(reshaped)} variables with another shape: {_listing(reshaped)}")
    if unused:
        problems.append(f"{len(unused)} checkpoint entries of the scope that no variable "
                        f"uses: {_listing(unused)}")
    if problems:
        raise InitError(
            f"train.init_from does not fit this model within init_scope={scope} (nothing was "
            "loaded, no step was taken):\n  " + "\n  ".join(problems) + "\nBuild the model of "
            "the source (model.backbone, fpn_channels, head_convs, head_channels, min/max_level"
            ", aux_head) or choose a smaller train.init_scope")
    # all_but_classes: the classification conv's kernel and bias are copied in part only.
    partly = len(CLASS_VARIABLES) if scope == "all_but_classes" else 0
    return assignments, {"loaded": len(assignments) - partly, "partly": partly,
                         "kept_initialisation": len(outside), "outside_scope": outside,
                         "class_channels_copied": class_channels}


def _config_differences(source_config, config):
    differences = {}
    for key in _SEMANTIC_KEYS:
        section, name = key.split(".")
        ours = getattr(getattr(config, section), name)
        theirs = getattr(getattr(source_config, section), name)
        if ours != theirs:
            differences[key] = {"source": theirs, "this run": ours}
    return differences


def _target_label_map(config, label_map):
    if label_map is not None:
        return label_map
    if config.data.label_map:
        return label_map_lib.load_label_map(config.data.label_map)
    return None


def initialise(model, config, model_dir, label_map=None, write=True):
    """Loads `config.train.init_from` into the built `model` (see the module docstring).

    Args:
      model: the run's built PAADetector.
      config: the run's ExperimentConfig.
      model_dir: the run folder (refused as a source; init.json is written there).
      label_map: the run's LabelMap (default: `data.label_map`).
      write: write init.json (the chief's job).
    Returns:
      the report (as written to init.json). Raises InitError before any assignment.
    """
    train = config.train
    with tempfile.TemporaryDirectory(prefix="paa_init_") as scratch:
        kind, folder, checkpoint, imported = resolve_source(train.init_from, model_dir, scratch)
        source_run = run_folder.RunFolder(folder)
        source_config = source_run.config() if source_run.has_config() else None
        source_labels = (source_run.label_map() if source_run.label_map_path.is_file()
                         else _target_label_map(source_config, None) if source_config
                         else None)
        target_labels = _target_label_map(config, label_map)
        mapping = (class_mapping(target_labels, source_labels, train.init_class_map)
                   if target_labels is not None and source_labels is not None else {})
        scope = _resolve_scope(train.init_scope, mapping, target_labels, source_labels)
        if scope in ("all", "all_but_classes") and (target_labels is None
                                                     or source_labels is None):
            which = "this run" if target_labels is None else folder
            raise InitError(f"train.init_scope={scope} needs the label maps of both models "
                            f"to carry the classes ({which} has none); give data.label_map "
                            "or a smaller init_scope")
        reader = tf.train.load_checkpoint(checkpoint)
        assignments, counts = plan(model, reader, scope, mapping,
                                   source_labels.num_classes if source_labels else 0)
        for variable, value in assignments:
            variable.assign(np.asarray(value).astype(variable.dtype.as_numpy_dtype))
    with_head = "head" in SCOPE_PARTS[scope]
    carried = ({target_labels.names[t]: source_labels.names[s]
                for t, s in sorted(mapping.items())} if with_head else {})
    report = {
        "source": os.path.abspath(train.init_from), "kind": kind,
        # A .pth's conversion lives in a temporary folder: only the file itself is a source.
        "checkpoint": checkpoint if kind != "pth" else None,
        "scope": scope, "scope_requested": train.init_scope,
        "variables_loaded": counts["loaded"],
        "variables_loaded_for_shared_classes_only": counts["partly"],
        "variables_kept_initialisation": counts["kept_initialisation"],
        "outside_scope": sorted({p.split("/")[0] for p in counts["outside_scope"]}),
        "classes_carried": carried,
        "classes_at_prior": ([n for i, n in enumerate(target_labels.names) if i not in mapping]
                             if with_head else []),
        "config_differences": (_config_differences(source_config, config)
                               if source_config is not None else {}),
    }
    if imported is not None:
        report["import"] = {k: imported[k] for k in ("source_file", "sha256", "layout",
                                                      "depth", "config")}
    if write:
        path = pathlib.Path(model_dir) / INIT_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=list) + "\n")
    return report


def summary(report):
    """Printable lines of an `initialise` report."""
    where = (f"{report['kind']}, {report['checkpoint']}" if report["checkpoint"] else
             f"{report['import']['layout']} ResNet-{report['import']['depth']} .pth, converted "
             "by the importer")
    lines = [f"Initialised from {report['source']} ({where}), init_scope {report['scope']}"
             + (" (auto)" if report["scope_requested"] == "auto" else "")
             + f": {report['variables_loaded']} variables loaded"
             + (f", {report['variables_loaded_for_shared_classes_only']} (the classification "
                "conv) for the shared classes only" if report[
                    "variables_loaded_for_shared_classes_only"] else "")
             + f", {report['variables_kept_initialisation']} kept their initialisation"
             + (f" ({', '.join(report['outside_scope'])})" if report["outside_scope"] else "")]
    carried, prior = report["classes_carried"], report["classes_at_prior"]
    if carried or prior:
        pairs = [new if new == old else f"{new} <- {old}" for new, old in carried.items()]
        lines.append(f"  classes from the source: {len(carried)} ({_listing(pairs) or 'none'}); "
                     f"at the prior: {len(prior)} ({_listing(prior) or 'none'})")
    for key, values in report["config_differences"].items():
        lines.append(f"  WARNING: {key} is {values['this run']!r} here but the source was "
                     f"trained with {values['source']!r}: its weights compute something else")
    return "\n".join(lines)
