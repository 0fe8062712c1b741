"""Experiment configuration: typed dataclasses, YAML files and strict overrides.

An experiment is one `ExperimentConfig` with the sections `data`, `model`,
`assign`, `loss`, `train`, `eval` and `export`. YAML files may start from
another file with `base: other.yaml` (a path relative to the file), then
override any subset of fields. A name that is no file there but a shipped preset's
(`quickstart`, `paa_r50_fpn_1x_coco`, with or without `.yaml`: the files of `PRESET_DIR`,
installed with the package and linked as the repository's `configs/`) loads that preset,
for `--config` and for `base:` alike. Unknown keys and values of the wrong type are
errors that name the key and, for a misspelling, the nearest valid key.

Defaults follow the authors' code ("KK", docs/CONVENTIONS.md) for the R50 1x COCO
schedule; what each switch value means: docs/CONVENTIONS.md, "Presets and switches".
"""

import dataclasses
import difflib
import math
import pathlib
import re
import typing
from typing import Dict, Optional, Tuple

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent numbers as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so `1e-3`,
    `1e4` and `5.0e3` load as strings; written that way in every reference config.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _yaml_load(text):
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def _choice(default, choices):
    """A string field that takes one of `choices`: the one list `validate` checks, and that
    the code reads back with `choices('section.key')`."""
    if default not in choices:
        raise AssertionError(f"default {default!r} is not one of {choices}")
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


@dataclasses.dataclass
class DataConfig:
    format: str = _choice("coco", ("coco", "voc", "tfrecord"))
    train_images: str = ""  # COCO image folder for training
    train_annotations: str = ""  # COCO instances JSON for training
    val_images: str = ""
    val_annotations: str = ""
    voc_root: str = ""  # VOC folder with Annotations/, JPEGImages/, ImageSets/Main/
    voc_train_split: str = "trainval"
    voc_val_split: str = "test"
    # VOC XML in any folders, instead of voc_root: the XML files, their images (default: the
    # XML folder) and the list file of each split (one name a line, a CSV's first column
    # works; empty = every XML of voc_annotations).
    voc_annotations: str = ""
    voc_images: str = ""
    voc_train_list: str = ""
    voc_val_list: str = ""
    train_tfrecords: str = ""  # glob of Model Garden-layout TFRecords
    val_tfrecords: str = ""
    label_map: str = ""  # JSON label map; derived from the annotations when empty
    min_size: Tuple[int, ...] = (800,)  # shorter side S, or a (S_min, S_max) range
    max_size: int = 1333  # longer side L after resizing
    # Padded input [H, W], multiples of 128; square so both orientations fit one static shape.
    image_size: Tuple[int, ...] = (1408, 1408)
    # 'square': pad every image into image_size. 'orientation': pad landscape and portrait
    # images into their own buckets per scale, multiples of 32, and in the export each image
    # to its own multiple of 32 (paa_tf/data/buckets.py, README "Padded input").
    buckets: str = _choice("square", ("square", "orientation"))
    # GT rows per image after padding; None: the most boxes in one image of the split read
    # (after the filters), so no image is refused or cut.
    max_instances: Optional[int] = None
    flip_prob: float = 0.5
    pixel_mean: Tuple[float, ...] = (123.675, 116.28, 103.53)  # RGB, 0-255
    pixel_std: Tuple[float, ...] = (58.395, 57.12, 57.375)
    skip_bad_records: bool = False  # skip, count and report bad records instead of failing
    deterministic: bool = False  # training batches in a fixed order (evaluation always is)
    shuffle_buffer: int = 1000
    num_parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE
    seed: int = 0
    # Image check at load: 'none' | 'header' (+ end marker) | 'decode' (+ TensorFlow decode,
    # finds data corrupt behind a valid header) | 'full' (+ PIL decode).
    verify_images: str = _choice("decode", ("none", "header", "decode", "full"))
    box_tolerance: float = 2.0  # px a box may cross the image border (clipped); more is bad
    voc_keep_difficult: bool = False  # train on VOC 'difficult' objects instead of as crowd

    @property
    def eval_shorter_side(self):
        """The evaluation scale: the largest training shorter side of `min_size` (as the
        authors evaluate). Evaluation, prediction and the export all resize to it."""
        return max(int(s) for s in self.min_size)


@dataclasses.dataclass
class ModelConfig:
    # resnextD_GxWd: ResNeXt-D with G groups of W channels in the first stage's 3x3 conv
    # (PyTorch layouts only; see resnet_torch.py).
    backbone: str = _choice("resnet50", ("tiny", "resnet18", "resnet34", "resnet50", "resnet101",
                                         "resnet152", "resnext50_32x4d", "resnext101_64x4d",
                                         "resnext101_32x8d", "resnext152_32x8d"))
    backbone_checkpoint: Optional[str] = None  # local checkpoint or .h5/.keras weights
    # Load a backbone checkpoint that does not cover the backbone exactly (reported, not refused).
    backbone_checkpoint_partial: bool = False
    # ResNet implementation: 'model_garden' (Model Garden's, TF 'same' padding), or a PyTorch
    # layout (symmetric padding) with the stride in the 3x3 conv ('torchvision', mmdetection)
    # or in the first 1x1 conv ('msra', the authors' maskrcnn-benchmark). See resnet_torch.py.
    backbone_style: str = _choice("model_garden", ("model_garden", "torchvision", "msra"))
    # Stages (2..5 = res2..res5) whose 3x3 convs are modulated deformable convs (DCNv2,
    # modeling/deform_conv.py), the authors' STAGE_WITH_DCN; PyTorch-layout ResNets only.
    backbone_dcn_stages: Tuple[int, ...] = ()
    deformable_groups: int = 1  # offset groups of every deformable conv (the authors': 1)
    # BatchNorm epsilon of the ResNet backbones: the value the pretrained weights were trained
    # with (Model Garden's ImageNet ResNets and torchvision: 1e-5, although Model Garden's ResNet
    # class defaults to 1e-3; 0 for the authors' FrozenBatchNorm).
    bn_epsilon: float = 1e-5
    # 'bgr': the backbone reverses the normalised RGB input
    input_channels: str = _choice("rgb", ("rgb", "bgr"))
    freeze_at: int = 2  # 0 none, 1 stem, 2 stem + first stage
    frozen_bn: bool = True
    # None: the number of classes of the training label map (paa_train fills it in and
    # saves it in the run's config.yaml); a value that disagrees with the data is refused.
    num_classes: Optional[int] = None
    min_level: int = 3
    max_level: int = 7
    fpn_channels: int = 256
    # KK: kaiming_uniform(a=1) = lecun_uniform; MM: glorot_uniform
    fpn_init: str = _choice("lecun_uniform", ("lecun_uniform", "glorot_uniform"))
    p7_from_relu: bool = True  # KK: P7 from ReLU(P6); MM: from P6
    head_convs: int = 4
    # The last conv of each head tower a modulated deformable conv (the authors'
    # USE_DCN_IN_TOWER).
    head_dcn: bool = False
    head_channels: int = 256
    head_norm: str = _choice("group", ("group", "none"))
    aux_head: str = _choice("iou", ("iou", "centerness", "none"))
    prior_prob: float = 0.01
    octave_base_scale: float = 8.0
    anchor_center_offset: float = 0.5
    # KK's "+1" pixel convention (width = x2 - x1 + 1), everywhere: ground truth, anchors, IoU,
    # box coding, clipping, NMS, voting and the COCO output. The one switch for it.
    plus_one: bool = False
    box_weights: Tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    delta_clamp: str = _choice("kk", ("kk", "mm"))  # 'kk' upper bound only, 'mm' both sides


@dataclasses.dataclass
class AssignConfig:
    method: str = _choice("paa", ("paa", "iou", "atss"))
    candidate_iou: float = 0.1
    low_quality: str = _choice("kk", ("kk", "mm"))  # low-quality rescue
    topk: int = 9  # candidates per GT per level
    score_lambda: float = 1.0  # weight of the GIoU term in the anchor score
    # The positive/negative split of the fitted GMM (paa_tf/assign/separation.py): Fig. 3's
    # schemes (a)-(d) and two ways to run (c), or the score-free 'fnp' / 'fsr'.
    separation: str = _choice("kk_c", ("kk_c", "mm_c", "a", "b", "b_orig", "d", "fnp", "fsr"))
    fnp_count: int = 10
    fsr_threshold: float = 0.1
    single_candidate: str = _choice("pos", ("pos", "neg"))  # 'pos' (KK) | 'neg' (MM)
    no_component0: str = _choice("all_pos", ("all_pos", "none"))  # 'all_pos' (KK) | 'none' (MM)
    max_gt_per_batch: int = 0  # padded G for the EM; 0 = batch size x max_instances
    iou_positive: float = 0.5  # IoU baseline thresholds (RetinaNet)
    iou_negative: float = 0.4
    iou_low_quality: bool = True  # IoU baseline: give each GT its best anchors too
    atss_topk: int = 9


@dataclasses.dataclass
class LossConfig:
    # The focal loss (Eq. 8's classification term), also in PAA's anchor score (Eq. 3).
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_weight: float = 1.3
    iou_weight: float = 0.5
    normalizer: str = _choice("all_reduce", ("all_reduce", "per_replica"))  # KK | MM


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 16  # global batch
    total_steps: int = 90000
    base_lr: float = 0.01
    reference_batch: int = 16  # base_lr is for this global batch
    scale_lr: bool = True  # scale base_lr linearly with batch_size / reference_batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0
    bias_weight_decay: float = 0.0
    warmup_steps: int = 500
    warmup_method: str = _choice("constant", ("constant", "linear"))  # KK | MM
    warmup_factor: float = 1.0 / 3.0
    lr_steps: Tuple[int, ...] = (60000, 80000)
    lr_decay: float = 0.1
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    checkpoint_data: bool = True  # save the input iterator's position with each checkpoint
    log_every: int = 20  # progress line and TensorBoard summaries
    eval_every: int = 0  # 0 = no periodic evaluation
    seed: int = 0
    mixed_precision: bool = False
    # Fine-tuning start (paa_tf/training/init_from.py, docs/CUSTOM_DATA.md): a run folder
    # (a training run or a paa_import output), a checkpoint prefix of one, or a released .pth
    # (converted by the importer). Applied on a fresh start only; a resumed run never re-reads it.
    init_from: str = ""
    # What init_from loads: 'auto' = 'all' when the classes are the source's, else
    # 'all_but_classes' (the classification conv keeps only the channels of shared classes).
    init_scope: str = _choice("auto", ("auto", "all", "all_but_classes", "backbone_fpn",
                                       "backbone"))
    # new class name: source class name, pairs added to (or overriding) the match by name.
    init_class_map: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Stop when a step's loss exceeds this multiple of the median of the 20 steps before it
    # (paa_tf/training/divergence.py; measured default: docs/ROBUSTNESS.md); 0 = off.
    divergence_factor: float = 10.0


@dataclasses.dataclass
class EvalConfig:
    batch_size: int = 8
    score_threshold: float = 0.05
    pre_nms_topk: int = 1000
    candidate_rule: str = _choice("kk", ("kk", "mm"))
    # How detections are ranked: sqrt(p*q), p*q (paper Eq. 1), or p alone.
    score: str = _choice("sqrt", ("sqrt", "product", "cls"))
    nms_iou: float = 0.6
    max_detections: int = 100
    score_voting: bool = True  # evaluation and the export
    voting_sigma: float = 0.025
    voting_iou: float = 0.01
    tta_scales: Tuple[int, ...] = ()  # shorter sides of the test-time views (all of them)
    tta_flip: bool = False
    # TensorBoard pictures of the first N evaluated images (0 = none) at every periodic
    # evaluation and with `paa_eval --image_summaries`, detections from this score up
    # (paa_tf/visualization/summaries.py).
    summary_images: int = 4
    summary_score_threshold: float = 0.3


@dataclasses.dataclass
class ExportConfig:
    version: int = 1
    max_image_size: int = 0  # 0 = data.image_size
    # Largest height x width of a request image, read from its header before decoding.
    max_pixels: int = 40_000_000
    # 'per_image': each image of a request padded to its own size and run alone (exact per
    # image); 'bucket': the request padded into one bucket and run as one batch (GPU servers
    # with server-side batching). paa_tf/serving/batching.py.
    batching: str = _choice("per_image", ("per_image", "bucket"))


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    assign: AssignConfig = dataclasses.field(default_factory=AssignConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


def _nearest(name, candidates):
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value, annotation, key):
    """`value` converted to the field type `annotation`, or a ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping (name: name), got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], key) for k, v in value.items()}
    if origin in (tuple, list):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported field type {annotation}")


# Keys that were removed, with the key that now decides the same thing. An old config (e.g.
# a run's saved config.yaml) may still hold one: accepted when it agrees with its
# replacement, an error naming both when it does not.
_REMOVED = {"eval.plus_one": "model.plus_one",
            "assign.focal_alpha": "loss.focal_alpha", "assign.focal_gamma": "loss.focal_gamma",
            "export.score_voting": "eval.score_voting"}


def _apply(obj, updates, prefix="", removed=None):
    """Set the fields of dataclass `obj` from the nested dict `updates`, strictly.

    Removed keys (`_REMOVED`) are collected into the dict `removed` for `_check_removed`.
    """
    if not isinstance(updates, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping, "
                          f"got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in updates.items():
        key = prefix + str(name)
        if key in _REMOVED and removed is not None:
            removed[key] = value
            continue
        if name not in names:
            raise ConfigError(f"unknown config key '{key}'{_nearest(str(name), names)}; "
                              f"valid keys here: {', '.join(names)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if value is not None:  # an empty section in YAML
                _apply(current, value, key + ".", removed)
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


PRESET_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def preset_names():
    """The shipped presets by name ('quickstart', ...), sorted."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name, folder="."):
    """The file a config name means: `folder / name` when that is a file (a `base:` is
    relative to its file's folder, `--config` to the working directory), else the shipped
    preset of a bare `name` ('quickstart' or 'quickstart.yaml'), else `folder / name`."""
    name = str(name)
    path = pathlib.Path(folder) / name
    preset = PRESET_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    bare = pathlib.Path(name).name == name
    return preset if bare and not path.is_file() and preset.is_file() else path


def _load_yaml(path, seen=()):
    path = pathlib.Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config {path}: 'base' files form a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (a shipped preset is named without "
                          f"a folder: {', '.join(preset_names())})")
    try:
        content = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    base = content.pop("base", None)
    layers = _load_yaml(resolve_config_path(base, path.parent), seen + (path,)) if base else []
    return layers + [(path, content)]


def _split_overrides(text):
    """'a.b=1,c.d=[1,2]' -> ['a.b=1', 'c.d=[1,2]'] (commas inside brackets kept)."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_overrides(overrides):
    """Dotted overrides ('a.b=1,c=x' strings or a list of them) -> nested dict.

    Values are read as YAML scalars: `1` is an int, `0.5` a float, `true` a
    bool, `[1, 2]` a list, anything else a string.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    nested = {}
    for item in overrides or []:
        for assignment in _split_overrides(item):
            if "=" not in assignment:
                raise ConfigError(f"override '{assignment}' must look like section.key=value")
            key, raw = assignment.split("=", 1)
            try:
                value = _yaml_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            node = nested
            parts = key.strip().split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override '{key}' conflicts with another override")
            node[parts[-1]] = value
    return nested


def _check_removed(config, removed, source=""):
    """ConfigError when a removed key (`_REMOVED`) disagrees with the key that replaced it."""
    for key, value in removed.items():
        new_key = _REMOVED[key]
        section, name = new_key.split(".")
        current = getattr(getattr(config, section), name)
        try:
            agrees = _coerce(value, type(current), key) == current
        except ConfigError:
            agrees = False
        if not agrees:
            raise ConfigError(
                f"{source}config key '{key}' was removed: '{new_key}' alone now decides it "
                f"(here {new_key}={current!r} but {key}={value!r}). Delete '{key}' and set "
                f"'{new_key}' to how the model was trained")


def build_config(layers=(), overrides=None):
    """An `ExperimentConfig` from defaults, then each dict of `layers`, then `overrides`."""
    config = ExperimentConfig()
    removed = {}
    for layer in layers:
        _apply(config, layer, removed=removed)
    if overrides:
        _apply(config, parse_overrides(overrides), removed=removed)
    _check_removed(config, removed)
    validate(config)
    return config


def load_config(path=None, overrides=None):
    """Load an experiment YAML (with its `base` chain) and apply dotted overrides."""
    config = ExperimentConfig()
    removed = {}
    for file_path, content in (_load_yaml(resolve_config_path(path)) if path else []):
        try:
            _apply(config, content, removed=removed)
        except ConfigError as error:
            raise ConfigError(f"{file_path}: {error}") from None
    if overrides:
        _apply(config, parse_overrides(overrides), removed=removed)
    _check_removed(config, removed, f"{path}: " if path else "")
    validate(config)
    return config


def _choice_fields():
    """{'section.key': choices} of every `_choice` field of `ExperimentConfig`."""
    found = {}
    for section in dataclasses.fields(ExperimentConfig):
        for field in dataclasses.fields(section.default_factory):
            if "choices" in field.metadata:
                found[f"{section.name}.{field.name}"] = field.metadata["choices"]
    return found


_CHOICES = _choice_fields()


def choices(key):
    """The values config key `key` ('section.name') may take, e.g. choices('eval.score')."""
    return _CHOICES[key]


SCORES = choices("eval.score")  # ways to rank detections

# Counts that must be at least 1: zero or a negative value would fail deep inside TensorFlow.
_POSITIVE = ("data.max_instances", "model.num_classes", "model.fpn_channels",
             "model.deformable_groups",
             "model.head_channels", "assign.topk", "assign.fnp_count", "train.batch_size",
             "train.total_steps", "train.checkpoint_every", "train.log_every", "eval.batch_size",
             "eval.pre_nms_topk", "eval.max_detections")

# Real-valued settings and their valid interval ('(' / ')' exclude the bound); every float
# setting must be finite besides.
_INTERVALS = {
    "data.flip_prob": "[0, 1]", "data.box_tolerance": "[0, inf)", "data.pixel_std": "(0, inf)",
    "model.prior_prob": "(0, 1)", "model.octave_base_scale": "(0, inf)",
    "model.box_weights": "(0, inf)",
    "assign.candidate_iou": "[0, 1]", "assign.score_lambda": "[0, inf)",
    "assign.fsr_threshold": "[0, 1]", "assign.iou_positive": "[0, 1]",
    "assign.iou_negative": "[0, 1]",
    "loss.focal_alpha": "[0, 1]", "loss.focal_gamma": "[0, inf)", "loss.reg_weight": "[0, inf)",
    "loss.iou_weight": "[0, inf)",
    "train.base_lr": "(0, inf)", "train.momentum": "[0, 1)", "train.weight_decay": "[0, inf)",
    "train.bias_lr_factor": "(0, inf)", "train.bias_weight_decay": "[0, inf)",
    "train.warmup_factor": "(0, 1]", "train.lr_decay": "(0, 1]",
    "train.divergence_factor": "[0, inf)",
    "eval.score_threshold": "[0, 1]", "eval.nms_iou": "(0, 1]", "eval.voting_sigma": "(0, inf)",
    "eval.voting_iou": "[0, 1]", "eval.summary_images": "[0, inf)",
    "eval.summary_score_threshold": "[0, 1]",
}


def _in_interval(value, interval):
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def _describe(interval):
    """'(0, inf)' -> 'greater than 0', '[0, 1)' -> 'at least 0 and less than 1', ..."""
    low, high = (bound.strip() for bound in interval[1:-1].split(","))
    parts = [f"at least {low}" if interval[0] == "[" else f"greater than {low}"]
    if high != "inf":
        parts.append(f"at most {high}" if interval[-1] == "]" else f"less than {high}")
    return " and ".join(parts)


def _check_numbers(config):
    """Every float setting finite, and each of `_INTERVALS` inside its interval."""
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for field in dataclasses.fields(part):
            key = f"{section.name}.{field.name}"
            value = getattr(part, field.name)
            values = value if isinstance(value, tuple) else (value,)
            numbers = [v for v in values if isinstance(v, float)]
            if any(not math.isfinite(v) for v in numbers):
                raise ConfigError(f"config key '{key}' is {value}; it must be a finite number")
            interval = _INTERVALS.get(key)
            if interval and not all(_in_interval(float(v), interval) for v in values):
                raise ConfigError(f"config key '{key}' is {value}; it must be "
                                  f"{_describe(interval)}")


def validate(config):
    """Check the choices and the cross-field rules; raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; choose one of {choices}")
    for key in _POSITIVE:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and value < 1:
            raise ConfigError(f"config key '{key}' is {value}; it must be at least 1")
    _check_numbers(config)
    for key in ("train.warmup_steps", "eval.tta_scales", "data.min_size", "data.max_size"):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if any(v < (0 if key == "train.warmup_steps" else 1)
               for v in (value if isinstance(value, tuple) else (value,))):
            raise ConfigError(f"config key '{key}' is {value}; it must not be "
                              f"{'negative' if key == 'train.warmup_steps' else 'below 1'}")
    size = config.data.image_size
    if len(size) != 2 or any(s <= 0 or s % 128 for s in size):
        raise ConfigError(f"config key 'data.image_size' is {size}; give [H, W], each a positive "
                          "multiple of 128 (the padded input bucket)")
    if len(config.data.min_size) not in (1, 2):
        raise ConfigError("config key 'data.min_size' takes one size S or a range [S_min, S_max]")
    if config.model.bn_epsilon < 0:
        raise ConfigError(f"config key 'model.bn_epsilon' is {config.model.bn_epsilon}; it must "
                          "be >= 0 (the epsilon the backbone checkpoint was trained with)")
    if 0 < config.train.divergence_factor <= 1:
        raise ConfigError(f"config key 'train.divergence_factor' is "
                          f"{config.train.divergence_factor}; it must be 0 (off) or above 1 "
                          "(a loss that many times the recent median stops the run)")
    if list(config.train.lr_steps) != sorted(config.train.lr_steps):
        raise ConfigError(f"config key 'train.lr_steps' must be increasing, got "
                          f"{config.train.lr_steps}")
    return config


def to_dict(config):
    """Plain nested dict (tuples as lists) of an `ExperimentConfig`, for YAML."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def save_config(config, path):
    """Write the resolved config as YAML (re-loadable with `load_config`), atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(path)
    return path
