"""Where each paa-tf variable lives in a reference checkpoint, and how it is transformed.

A paa-tf variable is named by its part, Keras layer and parameter (``Target``); a layout
maps it to the checkpoint key holding it (``source``) and lists the keys a file may hold that
are not weights (``ignored``). Facts about each reference, from its source code:

mmdetection (``PAA`` detector; ``mmdet/models/backbones/resnet.py``, ``necks/fpn.py``,
``dense_heads/atss_head.py``, ``configs/paa/paa_r50_fpn_1x_coco.py``), keys under
``backbone.``, ``neck.``, ``bbox_head.``:

* ``ResNet(style='pytorch')``: torchvision's module names (``conv1``, ``bn1``,
  ``layerI.B.convK``/``bnK``, ``layerI.0.downsample.0`` conv / ``.1`` BN) and stride in the
  3x3 conv; ``nn.BatchNorm2d`` (ε 1e-5, with a ``num_batches_tracked`` counter);
* ``FPN(start_level=1, add_extra_convs='on_output', num_outs=5)``: ``lateral_convs.0..2``
  read C3..C5 (start_level=1 skips C2), ``fpn_convs.0..2`` give P3..P5; with
  ``'on_output'`` the extra ``fpn_convs.3`` builds P6 from P5's output and ``fpn_convs.4``
  builds P7 from P6 (``relu_before_extra_convs`` defaults to False: no ReLU). Each conv is a
  ``ConvModule`` whose weights are under ``.conv``; they have biases (no norm);
* ``ATSSHead`` (``PAAHead`` adds no layers): ``cls_convs.i`` / ``reg_convs.i`` are
  ``ConvModule(3x3, norm GN(32))`` whose conv has no bias (``bias='auto'`` drops it before a
  norm) and whose GroupNorm is ``.gn``; ``atss_cls``, ``atss_reg`` (deltas in the order dx,
  dy, dw, dh, times ``scales.l.scale``, a 0-d tensor) and ``atss_centerness`` on the
  regression tower, which PAA uses as the IoU-prediction logit.

The authors' code (``kkhoot/PAA``, maskrcnn-benchmark layout: ``paa_core/modeling/backbone/
resnet.py``, ``fpn.py``, ``backbone.py``, ``rpn/paa/paa.py``, ``rpn/anchor_generator.py``):

* ``backbone.body``: ``stem.conv1``/``stem.bn1``, ``layerI.B.convK``/``bnK``,
  ``layerI.0.downsample.0``/``.1``; ``STRIDE_IN_1X1=True`` puts the stride in ``conv1``
  (their ResNeXt configs set it False: the stride is in the 3x3 ``conv2``);
  ``FrozenBatchNorm2d`` holds weight, bias, running_mean, running_var and uses no ε;
* ResNeXt (``RESNETS.NUM_GROUPS`` x ``WIDTH_PER_GROUP``): the same keys, ``conv2`` grouped, so
  ``layer1.0.conv2.weight`` is [G·W, W, 3, 3] (groups = its rows / columns);
* DCNv2 (``STAGE_WITH_DCN``, ``WITH_MODULATED_DCN``; ``DFConv2d`` in ``layers/misc.py``): a
  deformable ``conv2`` is a module with ``conv2.offset`` (a plain conv with bias giving
  3·dg·9 channels: offsets, then the modulation logits) and ``conv2.conv`` (the
  ``ModulatedDeformConv``: ``weight``, and ``bias`` only where built with one, i.e. not in the
  backbone); ``PAA.USE_DCN_IN_TOWER`` makes the last conv of each tower such a module, with
  bias (``cls_tower.9.offset``, ``cls_tower.9.conv``);
* ``backbone.fpn`` ("R-50-FPN-RETINANET"): ``in_channels_list`` starts with 0 for C2, so the
  blocks are ``fpn_inner2..4`` (laterals of C3..C5) and ``fpn_layer2..4`` (P3..P5), with
  biases; ``top_blocks.p6`` reads P5 (``USE_C5: False`` makes its input P5) and
  ``top_blocks.p7`` reads ReLU(P6);
* ``rpn.head``: ``cls_tower`` / ``bbox_tower`` are ``Sequential(conv, GroupNorm(32), ReLU)``
  x4, so the convs (with bias) are at indices 0, 3, 6, 9 and the GroupNorms at 1, 4, 7, 10;
  ``cls_logits``, ``bbox_pred`` (dx, dy, dw, dh; times ``scales.l.scale``, shape [1]) and
  ``iou_pred`` on the box tower;
* ``rpn.anchor_generator.cell_anchors.l`` are buffers: the base anchor of each level
  (x1, y1, x2, y2, +1 convention). They are not weights; ``strict_load`` checks them against
  paa-tf's anchors instead.

torchvision's ImageNet ResNet and ResNeXt files: the torchvision names without a prefix,
plus the classifier ``fc.weight`` / ``fc.bias``, which a detector has no use for.

mmdetection names a deformable conv after mmcv's ``ModulatedDeformConv2dPack``: its own
``weight`` / ``bias`` and the offset conv ``conv_offset`` (no PAA model with DCN is released
there; the names are kept so a file that has one fails on a named key).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

# Keras parameter -> PyTorch parameter/buffer name, for convs, BatchNorm and GroupNorm.
_PARAMS = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
           "moving_mean": "running_mean", "moving_variance": "running_var"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One paa-tf variable: ``part`` ('backbone' | 'fpn' | 'head'), Keras layer, parameter."""

    part: str
    layer: str
    param: str
    # The layer is a ModulatedDeformConv2D ('kernel', 'bias', 'offset_kernel', 'offset_bias').
    deformable: bool = False

    @property
    def path(self):
        return f"{self.part}/{self.layer}/{self.param}"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a target's value comes from: ``key`` of the file, or ``key=None`` for a value the
    reference does not have (``fill``: 'zeros'), and the array transform ``kind``:
    'conv' (OIHW -> HWIO), 'box_conv' (also reorders the 4 outputs dx, dy, dw, dh -> dy, dx,
    dh, dw), 'box_bias' (that reorder), 'scalar' (0-d or [1] -> 0-d) or 'copy'."""

    key: str | None
    kind: str = "copy"
    note: str = ""


def torchvision_module(layer: str, stem: str = "") -> str:
    """PyTorch module path of a ``resnet_torch`` layer name (torchvision's naming).

    'conv1' -> stem + 'conv1'; 'layer2_0_conv1' -> 'layer2.0.conv1';
    'layer2_0_downsample_conv' -> 'layer2.0.downsample.0' (and '_bn' -> '.1').
    """
    match = re.fullmatch(r"layer(\d)_(\d+)_(.+)", layer)
    if not match:
        return stem + layer
    stage, block, rest = match.groups()
    rest = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(rest, rest)
    return f"layer{stage}.{block}.{rest}"


# 'x' in torch delta order (dx, dy, dw, dh) -> paa-tf's (dy, dx, dh, dw).
BOX_ORDER = np.array([1, 0, 3, 2])


def convert(array, kind):
    """The paa-tf value of a checkpoint array (see ``Source``)."""
    if kind in ("conv", "box_conv"):
        array = np.transpose(array, (2, 3, 1, 0))  # [O, I, kh, kw] -> [kh, kw, I, O]
        return array[..., BOX_ORDER] if kind == "box_conv" else array
    if kind == "box_bias":
        return array[BOX_ORDER]
    if kind == "scalar":
        return array.reshape(()) if array.size == 1 else array
    return array


def _head_conv_kind(layer, param):
    if layer == "bbox_pred":
        return "box_conv" if param == "kernel" else "box_bias"
    return "conv" if param == "kernel" else "copy"


def conv_source(module: str, target: Target, offset_name: str = "offset",
                deform_name: str | None = "conv") -> Source:
    """The key of a conv/norm parameter of PyTorch module ``module``; for a deformable conv
    its offset conv is ``module.<offset_name>`` and its own weights ``module.<deform_name>``
    (or ``module`` itself when ``deform_name`` is None)."""
    param = target.param
    kind = "conv" if param.endswith("kernel") else "copy"
    if param.startswith("offset_"):
        return Source(f"{module}.{offset_name}.{_PARAMS[param[len('offset_'):]]}", kind)
    if target.deformable and deform_name:
        module = f"{module}.{deform_name}"
    return Source(f"{module}.{_PARAMS[param]}", kind)


class Layout:
    """Base: a layout names the file key of each target (``source``) and non-weight keys."""

    name = ""
    parts = ("backbone", "fpn", "head")

    def source(self, target: Target) -> Source:
        raise NotImplementedError

    def ignored(self, key: str) -> str | None:
        """Why ``key`` is not a weight (it is then not loaded), or None when it must be."""
        if key.endswith(".num_batches_tracked"):
            return "BatchNorm's update counter, not a weight"
        return None

    # Where a deformable conv keeps its offset conv and its own weights (see conv_source).
    offset_name, deform_name = "conv_offset", None

    def _backbone(self, target, stem, prefix):
        return conv_source(prefix + torchvision_module(target.layer, stem), target,
                           self.offset_name, self.deform_name)


class MMDetLayout(Layout):
    """mmdetection's PAA detector (``{'meta', 'state_dict'}``)."""

    name = "mmdet"

    def source(self, t):
        if t.part == "backbone":
            return self._backbone(t, "", "backbone.")
        if t.part == "fpn":
            kind, level = re.fullmatch(r"(lateral_c|output_p|extra_p)(\d)", t.layer).groups()
            # lateral_convs.0 / fpn_convs.0 belong to C3 / P3 (start_level=1); fpn_convs.3 and
            # .4 are the extra P6, P7 convs.
            module = ("neck.lateral_convs" if kind == "lateral_c" else "neck.fpn_convs")
            return Source(f"{module}.{int(level) - 3}.conv.{_PARAMS[t.param]}",
                          "conv" if t.param == "kernel" else "copy")
        match = re.fullmatch(r"(cls|box)_tower_(conv|gn)(\d+)", t.layer)
        if match:
            tower, kind, index = match.groups()
            module = f"bbox_head.{'cls' if tower == 'cls' else 'reg'}_convs.{index}"
            if kind == "gn":
                return Source(f"{module}.gn.{_PARAMS[t.param]}")
            if t.param == "bias":
                return Source(None, note="mmdetection's tower convs have no bias (GroupNorm "
                                         "follows); paa-tf's is set to 0")
            return conv_source(f"{module}.conv", t, self.offset_name, self.deform_name)
        if t.layer.startswith("scales_"):
            return Source(f"bbox_head.scales.{t.layer[len('scales_'):]}.scale", "scalar")
        module = {"cls_logits": "atss_cls", "bbox_pred": "atss_reg",
                  "iou_pred": "atss_centerness"}[t.layer]
        return Source(f"bbox_head.{module}.{_PARAMS[t.param]}", _head_conv_kind(t.layer, t.param))


class AuthorsLayout(MMDetLayout):
    """The authors' code (``{'model': ...}``, maskrcnn-benchmark module names)."""

    name = "authors"
    offset_name, deform_name = "offset", "conv"

    def source(self, t):
        if t.part == "backbone":
            return self._backbone(t, "stem.", "backbone.body.")
        if t.part == "fpn":
            kind, level = re.fullmatch(r"(lateral_c|output_p|extra_p)(\d)", t.layer).groups()
            # fpn_inner2..4 / fpn_layer2..4 are C3..C5's blocks (index 1 is C2's, skipped).
            module = {"lateral_c": f"fpn_inner{int(level) - 1}",
                      "output_p": f"fpn_layer{int(level) - 1}",
                      "extra_p": f"top_blocks.p{level}"}[kind]
            return Source(f"backbone.fpn.{module}.{_PARAMS[t.param]}",
                          "conv" if t.param == "kernel" else "copy")
        match = re.fullmatch(r"(cls|box)_tower_(conv|gn)(\d+)", t.layer)
        if match:
            tower, kind, index = match.groups()
            # Sequential(conv, GroupNorm, ReLU) x 4: conv i at 3i, its GroupNorm at 3i + 1.
            position = 3 * int(index) + (1 if kind == "gn" else 0)
            module = f"rpn.head.{'cls' if tower == 'cls' else 'bbox'}_tower.{position}"
            return conv_source(module, t)
        if t.layer.startswith("scales_"):
            return Source(f"rpn.head.scales.{t.layer[len('scales_'):]}.scale", "scalar")
        return Source(f"rpn.head.{t.layer}.{_PARAMS[t.param]}", _head_conv_kind(t.layer, t.param))

    def ignored(self, key):
        if re.fullmatch(r"rpn\.anchor_generator\.cell_anchors\.\d+", key):
            return "anchor buffer (checked against paa-tf's anchors)"
        return super().ignored(key)


class ImageNetLayout(Layout):
    """torchvision's ImageNet classification ResNet: the backbone only."""

    name = "imagenet"
    parts = ("backbone",)

    def source(self, t):
        return self._backbone(t, "", "")

    def ignored(self, key):
        if key.startswith("fc."):
            return "ImageNet classifier, not part of a detector's backbone"
        return super().ignored(key)


LAYOUTS = {layout.name: layout for layout in (MMDetLayout(), AuthorsLayout(), ImageNetLayout())}


def guess_layout(state, kind) -> str:
    """'mmdet' | 'authors' | 'imagenet' from the file's entries (see ``torch_file``)."""
    if kind == "mmdet" or any(k.startswith("bbox_head.") for k in state):
        return "mmdet"
    if kind == "authors" or any(k.startswith("rpn.head.") for k in state):
        return "authors"
    return "imagenet"


_PREFIX = {"mmdet": "backbone.", "authors": "backbone.body.", "imagenet": ""}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a checkpoint's keys and shapes say about its network (``architecture``)."""

    depth: int
    groups: int = 1
    width_per_group: int = 64
    dcn_stages: tuple = ()  # 2..5 (res2..res5)
    head_dcn: bool = False
    deformable_groups: int = 1

    @property
    def backbone(self) -> str:
        """The ``model.backbone`` name: resnet50 or resnext101_64x4d."""
        if self.groups == 1 and self.width_per_group == 64:
            return f"resnet{self.depth}"
        return f"resnext{self.depth}_{self.groups}x{self.width_per_group}d"

    @property
    def name(self) -> str:
        """A readable name: 'resnext101_64x4d + DCNv2 res4-5 + head DCNv2'."""
        parts = [self.backbone]
        if self.dcn_stages:
            parts.append(f"DCNv2 res{min(self.dcn_stages)}-{max(self.dcn_stages)}")
        if self.head_dcn:
            parts.append("head DCNv2")
        return " + ".join(parts)


def architecture(state, layout) -> Architecture:
    """The network of a checkpoint from its keys and shapes.

    Depth: blocks in stage 3 (6: 50, 23: 101, 36: 152). ResNeXt: the shape [G·W, W, 3, 3] of
    ``layer1.0.conv2``'s weight (ResNet: [64, 64, 3, 3]). DCN: the stages whose block 0 has an
    offset conv, the head towers' last conv likewise, and the offset conv's 3·dg·9 outputs.
    """
    prefix = _PREFIX[layout]
    blocks = {int(m.group(1)) for k in state
              for m in [re.match(re.escape(prefix) + r"layer3\.(\d+)\.", k)] if m}
    depth = {6: 50, 23: 101, 36: 152}.get(len(blocks))
    if depth is None:
        raise ValueError(f"cannot tell the ResNet depth: the checkpoint has {len(blocks)} blocks "
                         f"under '{prefix}layer3.' (ResNet-50/101/152 have 6/23/36)")
    layout_obj = LAYOUTS[layout]

    def key(module, param, deformable):
        target = Target("backbone", "", param, deformable)
        return conv_source(prefix + module, target, layout_obj.offset_name,
                           layout_obj.deform_name).key

    conv2 = next((state[k] for k in (key("layer1.0.conv2", "kernel", False),
                                     key("layer1.0.conv2", "kernel", True)) if k in state), None)
    groups, width = 1, 64
    if conv2 is not None and conv2.ndim == 4 and conv2.shape[1]:
        groups = max(1, conv2.shape[0] // conv2.shape[1])
        width = conv2.shape[0] // groups
    offsets = {stage: state.get(key(f"layer{stage - 1}.0.conv2", "offset_kernel", False))
               for stage in (2, 3, 4, 5)}
    dcn_stages = tuple(stage for stage, value in offsets.items() if value is not None)
    # The last of the authors' 4 tower convs sits at index 9 (see AuthorsLayout).
    head_offset = (state.get("rpn.head.cls_tower.9.offset.weight")
                   if layout == "authors" else None)
    channels = [v.shape[0] for v in [*offsets.values(), head_offset] if v is not None]
    return Architecture(depth, groups, width, dcn_stages, head_offset is not None,
                        deformable_groups=channels[0] // 27 if channels else 1)
