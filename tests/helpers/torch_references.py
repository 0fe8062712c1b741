"""The two reference PAA networks, written in PyTorch for the parity tests (tests only).

Written from the facts in ``paa_tf/convert/layouts.py`` (each reference's module names and
architecture): mmdetection's PAA (torchvision-layout ResNet with BatchNorm, FPN with
``start_level=1, add_extra_convs='on_output'``, ATSSHead) and the authors' (MSRA ResNet with
FrozenBatchNorm2d, maskrcnn-benchmark's FPN with LastLevelP6P7, PAAHead, anchor buffers).
Parameter names equal the references' so that ``state_dict()`` is a checkpoint in their
layout. ``randomize`` gives every weight and BN statistic a random value.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class DFConv2d(nn.Module):
    """The authors' modulated deformable conv module (``layers/misc.py``): ``offset``, a conv
    with bias giving 27 channels (18 offsets, then 9 modulation logits), and ``conv``, the
    ``ModulatedDeformConv`` holding ``weight`` (and ``bias`` when built with one)."""

    def __init__(self, cin, cout, stride=1, groups=1, bias=False):
        super().__init__()
        self.offset = nn.Conv2d(cin, 27, 3, stride=stride, padding=1)
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(torch.empty(cout, cin // groups, 3, 3))
        self.conv.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.stride = stride

    def forward(self, x):
        # torchvision only here: the plain reference networks need nothing but torch.
        from torchvision.ops import deform_conv2d

        out = self.offset(x)
        return deform_conv2d(x, out[:, :18], self.conv.weight, self.conv.bias,
                             stride=self.stride, padding=1, mask=out[:, 18:].sigmoid())


class FrozenBN(nn.Module):
    """maskrcnn-benchmark's FrozenBatchNorm2d: four buffers, y = (x - mean)·w/sqrt(var) + b."""

    def __init__(self, n):
        super().__init__()
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                            ("running_var", 1.0)):
            self.register_buffer(name, torch.full((n,), value))

    def forward(self, x):
        scale = self.weight * self.running_var.rsqrt()  # no epsilon
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class Bottleneck(nn.Module):
    def __init__(self, cin, width, cout, stride, stride_in_1x1, norm, groups=1, dcn=False):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(cin, width, 1, stride=s1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = (DFConv2d(width, width, stride=s3, groups=groups) if dcn else
                      nn.Conv2d(width, width, 3, stride=s3, padding=1, bias=False,
                                groups=groups))
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = norm(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            norm(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Stem(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)


class ResNet(nn.Module):
    """torchvision layout (``msra=False``: conv1/bn1 at the top, stride in the 3x3) or
    maskrcnn-benchmark's (``msra=True``: ``stem.conv1``, stride in the first 1x1, FrozenBN).

    ResNeXt: ``groups`` x ``width_per_group`` in the first stage's 3x3 conv; with
    ``stride_in_1x1=False`` the authors' ResNeXt (their layout, stride in the 3x3).
    ``dcn_stages``: stages (2..5) whose 3x3 convs are ``DFConv2d``."""

    def __init__(self, depth, msra, groups=1, width_per_group=64, stride_in_1x1=None,
                 dcn_stages=()):
        super().__init__()
        stride_in_1x1 = msra if stride_in_1x1 is None else stride_in_1x1
        norm = FrozenBN if msra else nn.BatchNorm2d
        self.msra = msra
        if msra:
            self.stem = Stem(norm)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm(64)
        cin = 64
        for stage, count in enumerate(BLOCKS[depth], start=1):
            width = groups * width_per_group * 2 ** (stage - 1)
            cout = 256 * 2 ** (stage - 1)
            blocks = []
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                blocks.append(Bottleneck(cin, width, cout, stride, stride_in_1x1, norm,
                                         groups=groups, dcn=stage + 1 in dcn_stages))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))

    def forward(self, x):
        if self.msra:
            x = self.stem(x)
        else:
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        features = []
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            features.append(x)
        return features[1:]  # C3, C4, C5


class ConvModule(nn.Module):
    """mmcv's ConvModule as far as its weights go: ``.conv`` and, with a norm, ``.gn``."""

    def __init__(self, cin, cout, kernel, stride=1, gn=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2,
                              bias=not gn)
        if gn:
            self.gn = nn.GroupNorm(32, cout)
        self.with_gn = gn

    def forward(self, x):
        x = self.conv(x)
        return F.relu(self.gn(x)) if self.with_gn else x


class MMFPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, 256, 1) for c in (512, 1024, 2048))
        self.fpn_convs = nn.ModuleList(
            [ConvModule(256, 256, 3) for _ in range(3)]
            + [ConvModule(256, 256, 3, stride=2) for _ in range(2)])

    def forward(self, features):
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in (2, 1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(3)]
        outs.append(self.fpn_convs[3](outs[-1]))  # 'on_output': P6 from P5
        outs.append(self.fpn_convs[4](outs[-1]))  # no ReLU before P7
        return outs


class MMScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))  # 0-d, as mmcv's Scale


class MMHead(nn.Module):
    def __init__(self, num_classes=80):
        super().__init__()
        self.cls_convs = nn.ModuleList(ConvModule(256, 256, 3, gn=True) for _ in range(4))
        self.reg_convs = nn.ModuleList(ConvModule(256, 256, 3, gn=True) for _ in range(4))
        self.atss_cls = nn.Conv2d(256, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(256, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(256, 1, 3, padding=1)
        self.scales = nn.ModuleList(MMScale() for _ in range(5))

    def forward(self, pyramid):
        outputs = []
        for feature, scale in zip(pyramid, self.scales):
            cls_feat, reg_feat = feature, feature
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            outputs.append((self.atss_cls(cls_feat), self.atss_reg(reg_feat) * scale.scale,
                            self.atss_centerness(reg_feat)))
        return outputs


class MMDetPAA(nn.Module):
    """mmdetection's PAA detector: ``backbone``, ``neck``, ``bbox_head``."""

    def __init__(self, depth=50):
        super().__init__()
        self.backbone = ResNet(depth, msra=False)
        self.neck = MMFPN()
        self.bbox_head = MMHead()

    def forward(self, x):
        return self.bbox_head(self.neck(self.backbone(x)))

    def checkpoint(self):
        return {"meta": {"mmdet_version": "2.4.0", "CLASSES": [str(i) for i in range(80)]},
                "state_dict": self.state_dict()}


class KKFPN(nn.Module):
    def __init__(self):
        super().__init__()
        for index, cin in zip((2, 3, 4), (512, 1024, 2048)):
            setattr(self, f"fpn_inner{index}", nn.Conv2d(cin, 256, 1))
            setattr(self, f"fpn_layer{index}", nn.Conv2d(256, 256, 3, padding=1))
        self.top_blocks = nn.Module()
        self.top_blocks.p6 = nn.Conv2d(256, 256, 3, stride=2, padding=1)
        self.top_blocks.p7 = nn.Conv2d(256, 256, 3, stride=2, padding=1)

    def forward(self, features):
        inner = self.fpn_inner4(features[2])
        results = [self.fpn_layer4(inner)]
        for index, feature in ((3, features[1]), (2, features[0])):
            lateral = getattr(self, f"fpn_inner{index}")(feature)
            inner = lateral + F.interpolate(inner, size=lateral.shape[2:], mode="nearest")
            results.insert(0, getattr(self, f"fpn_layer{index}")(inner))
        p6 = self.top_blocks.p6(results[-1])  # USE_C5=False: from P5
        p7 = self.top_blocks.p7(F.relu(p6))
        return results + [p6, p7]


class KKScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))


class KKHead(nn.Module):
    def __init__(self, num_classes=80, dcn=False):
        super().__init__()
        for name in ("cls_tower", "bbox_tower"):
            layers = []
            for index in range(4):
                conv = (DFConv2d(256, 256, bias=True) if dcn and index == 3
                        else nn.Conv2d(256, 256, 3, padding=1))
                layers += [conv, nn.GroupNorm(32, 256), nn.ReLU()]
            setattr(self, name, nn.Sequential(*layers))
        self.cls_logits = nn.Conv2d(256, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(256, 4, 3, padding=1)
        self.iou_pred = nn.Conv2d(256, 1, 3, padding=1)
        self.scales = nn.ModuleList(KKScale() for _ in range(5))

    def forward(self, pyramid):
        outputs = []
        for feature, scale in zip(pyramid, self.scales):
            cls_feat, box_feat = self.cls_tower(feature), self.bbox_tower(feature)
            outputs.append((self.cls_logits(cls_feat), self.bbox_pred(box_feat) * scale.scale,
                            self.iou_pred(box_feat)))
        return outputs


class KKAnchorBuffers(nn.Module):
    """The anchor generator's ``cell_anchors`` BufferList: base anchor of each level."""

    def __init__(self):
        super().__init__()
        self.cell_anchors = nn.Module()
        for index, stride in enumerate((8, 16, 32, 64, 128)):
            centre, half = stride / 2.0, (8 * stride - 1) / 2.0
            self.cell_anchors.register_buffer(
                str(index), torch.tensor([[centre - half, centre - half, centre + half,
                                           centre + half]]))


class KKPAA(nn.Module):
    """The authors' GeneralizedRCNN with PAA: ``backbone.body``, ``backbone.fpn``, ``rpn``."""

    def __init__(self, depth=50, groups=1, width_per_group=64, dcn_stages=(), head_dcn=False):
        super().__init__()
        # Their ResNeXt configs set STRIDE_IN_1X1 False; their ResNets keep True.
        body = ResNet(depth, msra=True, groups=groups, width_per_group=width_per_group,
                      stride_in_1x1=groups == 1, dcn_stages=dcn_stages)
        self.backbone = nn.Sequential(OrderedDict([("body", body), ("fpn", KKFPN())]))
        self.rpn = nn.Module()
        self.rpn.head = KKHead(dcn=head_dcn)
        self.rpn.anchor_generator = KKAnchorBuffers()

    def forward(self, x):
        return self.rpn.head(self.backbone.fpn(self.backbone.body(x)))

    def checkpoint(self):
        # DistributedDataParallel's 'module.' prefix, as in the released files.
        return {"model": OrderedDict((f"module.{k}", v) for k, v in self.state_dict().items()),
                "iteration": 135000}


def randomize(model, seed, small_var_fraction=0.1):
    """Random weights and BN statistics, scaled so activations stay O(1) through the net.

    A ``small_var_fraction`` of each BN's channels get a running variance of 1e-4..1e-3 (and a
    weight scaled down to match), where an ε of 1e-5 changes the output by ~1-5 %: a backbone
    with the wrong ε fails the comparison.
    """
    rng = np.random.default_rng(seed)

    def fill(tensor, values):
        tensor.data.copy_(torch.from_numpy(np.asarray(values, np.float32).reshape(tensor.shape)))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                fill(module.weight, rng.normal(0, np.sqrt(1.0 / fan_in), module.weight.shape))
                if module.bias is not None:
                    fill(module.bias, rng.normal(0, 0.1, module.bias.shape))
            elif isinstance(module, (nn.BatchNorm2d, FrozenBN)):
                n = module.weight.shape[0]
                var = rng.uniform(0.5, 2.0, n)
                small = rng.random(n) < small_var_fraction
                var[small] = rng.uniform(1e-4, 1e-3, small.sum())
                weight = rng.uniform(0.3, 1.0, n) * np.where(small, np.sqrt(var), 1.0)
                fill(module.weight, weight)
                fill(module.bias, rng.normal(0, 0.1, n))
                fill(module.running_mean, rng.normal(0, 0.2, n))
                fill(module.running_var, var)
            elif isinstance(module, DFConv2d):
                weight = module.conv.weight
                fill(weight, rng.normal(0, np.sqrt(1.0 / weight[0].numel()), weight.shape))
                if module.conv.bias is not None:
                    fill(module.conv.bias, rng.normal(0, 0.1, module.conv.bias.shape))
            elif isinstance(module, nn.GroupNorm):
                fill(module.weight, rng.uniform(0.5, 1.5, module.weight.shape))
                fill(module.bias, rng.normal(0, 0.1, module.bias.shape))
            elif isinstance(module, (MMScale, KKScale)):
                fill(module.scale, rng.uniform(0.5, 1.5, module.scale.shape))
        for module in model.modules():
            if isinstance(module, DFConv2d):
                # Offsets of a few pixels (std ~3): samples cross pixels and image borders.
                module.offset.weight.mul_(3.0)
        heads = [m for m in model.modules() if isinstance(m, (MMHead, KKHead))]
        for head in heads:
            cls = head.atss_cls if isinstance(head, MMHead) else head.cls_logits
            # Class logits around -2.5 (p ~ 0.08): some candidates pass the 0.05 threshold.
            fill(cls.bias, rng.normal(-2.5, 0.3, cls.bias.shape))
    return model.eval()


def to_paa_layout(outputs):
    """Reference per-level NCHW outputs -> paa-tf's flattened arrays (per level, and all).

    Returns {'cls_logits': [B, A, C], 'box_deltas': [B, A, 4] (dy, dx, dh, dw),
    'iou_logits': [B, A]} and the per-level lists.
    """
    per_level = {"cls_logits": [], "box_deltas": [], "iou_logits": []}
    for cls, box, iou in outputs:
        batch = cls.shape[0]
        flat = [t.detach().permute(0, 2, 3, 1).reshape(batch, -1, t.shape[1]).numpy()
                for t in (cls, box, iou)]
        per_level["cls_logits"].append(flat[0])
        per_level["box_deltas"].append(flat[1][..., [1, 0, 3, 2]])
        per_level["iou_logits"].append(flat[2][..., 0])
    return per_level
