"""Released-model parity: reference PyTorch PAA networks -> bin/paa_import -> paa-tf.

Each reference network (mmdetection's and the authors', ResNet-50 + FPN + head, written in
PyTorch in ``tests/helpers/torch_references.py``) gets random weights and random BN
statistics, is saved with ``torch.save`` in the reference's checkpoint layout, imported with
``bin/paa_import``'s main, and fed the same image as the restored paa-tf model. The oracle is
PyTorch itself. Compared: every level's class logits, box deltas and IoU logits (within 1e-4
of the level's largest reference magnitude), the backbone's C3..C5 (BN ε included), and the
detections of each reference's post-processing rules (``eval.candidate_rule`` mm / kk).
"""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import torch

from paa_tf import config as config_lib
from paa_tf.convert import coco_categories
from paa_tf.inference import postprocess
from paa_tf.modeling import restore
from tests.helpers import torch_references as ref

REPO = pathlib.Path(__file__).resolve().parents[1]
# Not multiples of 32/128: P5 is 5x7, P6 3x4, P7 2x2, exercising PyTorch's padding and
# nearest-upsampling rules on odd sizes.
HEIGHT, WIDTH = 160, 224
RELATIVE_TOLERANCE = 1e-4
# The authors' BGR Caffe means, in B, G, R order, as their code subtracts them.
CAFFE_MEANS_BGR = np.array([102.9801, 115.9465, 122.7717], np.float32)
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)


def cli_import(args):
    """Run bin/paa_import's main in this process; its exit code (absl flags cleaned up)."""
    from absl import flags

    from paa_tf.cli import import_ as import_cli

    before = set(flags.FLAGS)
    try:
        with pytest.raises(SystemExit) as done:
            import_cli.main(["paa_import"] + [str(a) for a in args])
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
    return done.value.code


def rgb_image(seed=0):
    """A smooth random RGB image, uint8 values as float32 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, size=(HEIGHT // 8 + 2, WIDTH // 8 + 2, 3))
    image = tf.image.resize(base[None], [HEIGHT, WIDTH], method="bicubic")[0].numpy()
    return np.round(np.clip(image, 0, 255)).astype(np.float32)


def reference_input(source, image):
    """The reference's own pre-processing of an RGB image: NCHW float tensor."""
    if source == "mmdet":
        array = (image - IMAGENET_MEAN) / IMAGENET_STD
    else:  # to_bgr255, minus the BGR means, std 1
        array = image[..., ::-1] - CAFFE_MEANS_BGR
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)[None]))


def paa_input(config, image):
    """paa-tf's normalisation of the same RGB image (the config's mean/std): [1, H, W, 3]."""
    mean = np.array(config.data.pixel_mean, np.float32)
    std = np.array(config.data.pixel_std, np.float32)
    return tf.constant(((image - mean) / std)[None])


@pytest.fixture(scope="module", params=["mmdet", "authors"])
def imported(request, tmp_path_factory):
    """A reference network, its checkpoint, the imported run folder and the restored model."""
    source = request.param
    torch.manual_seed(0)
    network = ref.MMDetPAA(50) if source == "mmdet" else ref.KKPAA(50)
    network = ref.randomize(network, seed=11 if source == "mmdet" else 12)
    folder = tmp_path_factory.mktemp(f"import_{source}")
    checkpoint = folder / f"{source}.pth"
    torch.save(network.checkpoint(), checkpoint)
    run_dir = folder / "run"
    assert cli_import(["--torch_checkpoint", checkpoint, "--output_dir", run_dir]) == 0
    config = config_lib.load_config(run_dir / "config.yaml")
    model = restore.restore_model(config, tf.train.latest_checkpoint(str(run_dir)),
                                     (HEIGHT, WIDTH))
    return {"source": source, "network": network, "checkpoint": checkpoint,
            "run_dir": run_dir, "config": config, "model": model}


@pytest.mark.slow
def test_run_folder_is_laid_out_like_a_training_run(imported):
    run_dir = imported["run_dir"]
    labels = json.loads((run_dir / "label_map.json").read_text())
    assert len(labels) == 80 and labels[0]["id"] == 1 and labels[-1]["id"] == 90
    assert [e["index"] for e in labels] == list(range(80))
    report = json.loads((run_dir / "import.json").read_text())
    assert report["layout"] == imported["source"] and report["depth"] == 50
    preset = {"mmdet": "paa_r50_fpn_1x_coco_mmdet.yaml",
              "authors": "paa_r50_fpn_1.5x_coco_authors.yaml"}[imported["source"]]
    assert imported["config"] == config_lib.load_config(REPO / "configs" / preset)
    # bin/paa_train's checkpoint layout: a 'step' counter beside the model.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir)))
    assert "step/.ATTRIBUTES/VARIABLE_VALUE" in reader.get_variable_to_shape_map()


def _relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.slow
def test_every_level_output_matches_the_reference(imported):
    image = rgb_image(1)
    with torch.no_grad():
        expected = ref.to_paa_layout(imported["network"](reference_input(imported["source"],
                                                                          image)))
    outputs = imported["model"](paa_input(imported["config"], image), training=False)
    worst = assert_levels_match(expected, outputs, imported["model"].level_ids,
                                imported["source"])
    print(f"\n{imported['source']}: largest relative difference per output {worst}")


def assert_levels_match(expected, outputs, level_ids, label):
    """Every level of every output within RELATIVE_TOLERANCE; {output: largest error}."""
    starts = np.concatenate([[0], np.cumsum(np.bincount(level_ids))])
    worst = {}
    for name, levels in expected.items():
        for level, want in enumerate(levels):
            got = outputs[name].numpy()[:, starts[level]:starts[level + 1]]
            assert got.shape == want.shape, (name, level)
            error = _relative_error(got, want)
            worst[name] = max(worst.get(name, 0.0), error)
            assert error < RELATIVE_TOLERANCE, (
                f"{label} {name} P{level + 3}: max |diff| / max |ref| = {error:.2e}")
    return worst


@pytest.mark.slow
def test_backbone_reproduces_the_reference_features_with_the_checkpoints_bn_epsilon(
        imported):
    """C3..C5 equal the reference's; the same weights with another BN ε do not."""
    image = rgb_image(2)
    body = (imported["network"].backbone if imported["source"] == "mmdet"
            else imported["network"].backbone.body)
    with torch.no_grad():
        want = [f.permute(0, 2, 3, 1).numpy()
                for f in body(reference_input(imported["source"], image))]
    backbone = imported["model"].backbone
    got = backbone(paa_input(imported["config"], image), training=False)
    for level, expected in zip((3, 4, 5), want):
        assert _relative_error(got[level].numpy(), expected) < RELATIVE_TOLERANCE, level
    # Oracle sanity: the features are sensitive to ε (a backbone with 1e-3, Model Garden's
    # default, or the other reference's ε gives visibly different C5).
    from paa_tf.modeling.backbone import build_backbone

    wrong_eps = 1e-3 if imported["source"] == "authors" else 0.0
    other = build_backbone(
        config_lib.ModelConfig(**{**imported["config"].model.__dict__, "bn_epsilon": wrong_eps}),
        (HEIGHT, WIDTH, 3))
    other.set_weights(backbone.get_weights())
    changed = other(paa_input(imported["config"], image), training=False)[5].numpy()
    assert _relative_error(changed, want[2]) > 1e-3


def _detections(config, model, outputs, image_info):
    params = postprocess.PostprocessParams.from_config(config)
    return {k: v.numpy() for k, v in postprocess.postprocess(
        tf.constant(outputs["cls_logits"]), tf.constant(outputs["box_deltas"]),
        tf.constant(outputs["iou_logits"]), model.anchors, image_info,
        level_ids=model.level_ids, params=params).items()}


@pytest.mark.slow
def test_detections_match_after_the_references_post_processing(imported):
    """Same detections from the reference's outputs and paa-tf's, with the preset's rules."""
    config = imported["config"]
    assert config.eval.candidate_rule == ("mm" if imported["source"] == "mmdet" else "kk")
    image = rgb_image(3)
    with torch.no_grad():
        levels = ref.to_paa_layout(imported["network"](reference_input(imported["source"],
                                                                       image)))
    model = imported["model"]
    assert_same_detections(config, model, levels, model(paa_input(config, image),
                                                        training=False))


def assert_same_detections(config, model, reference_levels, outputs):
    """The config's post-processing gives the same detections from the reference's per-level
    outputs (``to_paa_layout``) and from paa-tf's ``outputs``."""
    expected_raw = {k: np.concatenate(v, axis=1) for k, v in reference_levels.items()}
    got_raw = {k: v.numpy() for k, v in outputs.items()}
    size = np.array([HEIGHT, WIDTH], np.float32)
    info = tf.constant([[size, size, [1.0, 1.0], [0.0, 0.0]]], tf.float32)
    want = _detections(config, model, expected_raw, info)
    got = _detections(config, model, got_raw, info)
    count = int(want["num_detections"][0])
    assert count > 10, "the reference gives few detections: a vacuous comparison"
    assert int(got["num_detections"][0]) == count
    # Match each reference detection to paa-tf's by class, box and score: the order of two
    # detections whose scores differ by less than the round-off may be either.
    scores = want["detection_scores"][0, :count]
    assert len(np.unique(scores)) == count, "exact score ties: pick another image or seed"
    free = np.ones(count, bool)
    got_boxes = got["detection_boxes"][0, :count]
    for i in range(count):
        same = (free & (got["detection_classes"][0, :count] == want["detection_classes"][0, i])
                & (np.abs(got["detection_scores"][0, :count] - scores[i]) <= 1e-5)
                # Boxes are ~10-200 px: 1e-3 px is a relative ~1e-5.
                & (np.abs(got_boxes - want["detection_boxes"][0, i]).max(axis=1) <= 1e-3))
        assert same.any(), f"reference detection {i} has no paa-tf twin"
        free[np.flatnonzero(same)[0]] = False


# --- Bad checkpoints: every error names the key, and nothing is loaded. ---

def _state(imported):
    from paa_tf.convert import torch_file

    return torch_file.read_state_dict(imported["checkpoint"])[0]


def _cls_key(source):
    return "bbox_head.atss_cls.weight" if source == "mmdet" else "rpn.head.cls_logits.weight"


def test_unknown_missing_and_mismatched_keys_are_named_and_nothing_is_loaded(imported):
    from paa_tf.convert import strict_load
    from paa_tf.convert.torch_file import CheckpointError

    source, model = imported["source"], imported["model"]
    before = [v.numpy() for v in model.head.scales]
    layout = "mmdet" if source == "mmdet" else "authors"
    state = _state(imported)
    state["bbox_head.extra_conv.weight"] = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"'bbox_head\.extra_conv\.weight' \[4, 4, 3, 3\]"):
        strict_load.load_strict(model, state, layout)
    state = _state(imported)
    missing = next(k for k in state if k.endswith("layer3.4.bn2.running_var"))
    del state[missing]
    with pytest.raises(CheckpointError, match=rf"'{missing}' \(for backbone/layer3_4_bn2/"
                                              r"moving_variance\)"):
        strict_load.load_strict(model, state, layout)
    state = _state(imported)
    state[_cls_key(source)] = np.zeros((81, 256, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match=rf"'{_cls_key(source)}': shape \[81, 256, 3, 3\]"):
        strict_load.load_strict(model, state, layout)
    # All or nothing: the failed loads changed no variable.
    for variable, value in zip(model.head.scales, before):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.slow
def test_cli_reports_a_bad_checkpoint_naming_the_key(imported, tmp_path, capsys):
    content = torch.load(imported["checkpoint"], weights_only=True)
    weights = content["state_dict" if imported["source"] == "mmdet" else "model"]
    key = next(k for k in weights if k.endswith("layer1.0.conv1.weight"))
    weights[key] = weights[key][:, :, :1, :1].repeat(1, 1, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(content, bad)
    # bad input
    assert cli_import(["--torch_checkpoint", bad, "--output_dir", tmp_path / "run"]) == 2
    error = capsys.readouterr().err
    assert f"'{key.removeprefix('module.')}': shape [64, 64, 3, 3]" in error
    assert "nothing was loaded" in error
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_file_with_arbitrary_python_objects_is_refused_unread(tmp_path):
    import argparse

    from paa_tf.convert import torch_file

    path = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(torch_file.CheckpointError, match="weights_only=True"):
        torch_file.read_state_dict(path)


def test_missing_pytorch_says_what_to_install(monkeypatch):
    import sys

    from paa_tf.convert import torch_file

    monkeypatch.setitem(sys.modules, "torch", None)  # 'import torch' now raises
    with pytest.raises(torch_file.CheckpointError, match=r"pip install torch==2\.13\.0"):
        torch_file.read_state_dict(__file__)


def test_a_config_that_computes_something_else_is_refused():
    from paa_tf.convert import importer
    from paa_tf.convert.layouts import Architecture
    from paa_tf.convert.torch_file import CheckpointError

    authors = config_lib.load_config(REPO / "configs" / "paa_r50_fpn_1.5x_coco_authors.yaml")
    with pytest.raises(CheckpointError, match="model.backbone_style is 'msra'"):
        importer.check_config(authors, "mmdet", Architecture(50), "authors.yaml")
    mmdet = config_lib.load_config(REPO / "configs" / "paa_r50_fpn_1x_coco_mmdet.yaml")
    with pytest.raises(CheckpointError, match="model.backbone is 'resnet50'"):
        importer.check_config(mmdet, "mmdet", Architecture(101), "mmdet.yaml")


# --- ImageNet initialisation (what mmdetection trains from). ---

@pytest.mark.slow
def test_imagenet_resnet_converts_to_a_backbone_checkpoint_training_loads_whole(tmp_path):
    """torchvision's ResNet-50 classifier file -> a TF backbone checkpoint; build_detector
    with the mmdet preset loads every backbone variable and gives torchvision's features."""
    network = ref.randomize(ref.ResNet(50, msra=False), seed=21)
    classifier = torch.nn.Linear(2048, 1000)
    state = {**network.state_dict(), **{f"fc.{k}": v for k, v in classifier.state_dict().items()}}
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, path)
    assert cli_import(["--torch_checkpoint", path, "--output_dir", tmp_path / "tv"]) == 0
    report = json.loads((tmp_path / "tv" / "import.json").read_text())
    assert report["layout"] == "imagenet" and set(report["not_weights"]) >= {"fc.weight",
                                                                           "fc.bias"}
    config, model = model_on_imported_backbone(tmp_path / "tv" / "ckpt-0")
    image = rgb_image(4)
    with torch.no_grad():
        want = network(reference_input("mmdet", image))[2].permute(0, 2, 3, 1).numpy()
    got = model.backbone(paa_input(config, image), training=False)[5].numpy()
    assert _relative_error(got, want) < RELATIVE_TOLERANCE


def model_on_imported_backbone(checkpoint, overrides=()):
    """(config, detector) of the mmdetection R-50 preset with `overrides`, its backbone loaded
    from the backbone checkpoint `checkpoint` that bin/paa_import wrote: every weight loaded,
    none missing, reshaped or unused."""
    from paa_tf.modeling.detector import build_detector  # TensorFlow model code: these tests

    config = config_lib.load_config(
        REPO / "configs" / "paa_r50_fpn_1x_coco_mmdet.yaml",
        overrides=list(overrides) + [f"model.backbone_checkpoint={checkpoint}"])
    model = build_detector(config, image_size=(HEIGHT, WIDTH))
    load = model.backbone_load_report
    assert not load.missing and not load.shape_mismatch and not load.unused
    assert len(load.loaded) == len(model.backbone.weights)
    return config, model


# --- The imported run, exported: same detections as the checkpoint evaluated in Python. ---

EXPORT_OVERRIDES = "data.image_size=[256,256],data.min_size=[256],data.max_size=256"


@pytest.mark.slow
# The authors' run only (a SavedModel of a ResNet-50 takes a minute or two to write): it
# carries the most conversions through the export (BGR input, the +1 convention, KK rules).
@pytest.mark.slow
@pytest.mark.parametrize("imported", ["authors"], indirect=True)
def test_export_of_the_imported_run_gives_the_python_detections(imported, tmp_path):
    """paa_export of the imported run folder vs the eval pre-processing, the restored Keras
    model and paa_tf.inference.postprocess run eagerly on the same JPEG."""
    from absl import flags

    from paa_tf.cli import export as export_cli
    from paa_tf.data import buckets, transforms

    export_dir = tmp_path / "export"
    before = set(flags.FLAGS)
    try:
        with pytest.raises(SystemExit) as done:
            export_cli.main(["paa_export", "--model_dir", str(imported["run_dir"]),
                             "--export_dir", str(export_dir), "--override",
                             EXPORT_OVERRIDES])
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
    assert done.value.code in (0, None)
    loaded = tf.saved_model.load(str(export_dir / "1"))
    image = rgb_image(5).astype(np.uint8)
    encoded = tf.io.encode_jpeg(image, quality=95).numpy()
    served = {k: v.numpy() for k, v in loaded.signatures["serving_default"](
        inputs=tf.constant([encoded])).items()}

    config = config_lib.load_config(imported["run_dir"] / "config.yaml",
                                    overrides=EXPORT_OVERRIDES)
    data = config.data
    model = restore.restore_model(
        config, tf.train.latest_checkpoint(str(imported["run_dir"])), tuple(data.image_size))
    decoded = transforms.decode_image(encoded)
    resized, info = transforms.resize_image(
        decoded, max(data.min_size), data.max_size, buckets.image_size_of(data),
        data.pixel_mean, data.pixel_std)
    # The COCO presets' export pads an image to its own multiples of 32 (data.buckets:
    # orientation, README "Padded input"): 183x256 -> 192x256 here.
    assert data.buckets == "orientation"
    shape = tuple(-(-int(n) // 32) * 32 for n in resized.shape[:2])
    outputs = model(transforms.pad_image(resized, shape)[None], training=False)
    anchors, level_ids = model.anchors_for(*shape)
    want = {k: v.numpy() for k, v in postprocess.postprocess(
        outputs["cls_logits"], outputs["box_deltas"], outputs["iou_logits"], anchors,
        info[None], level_ids=level_ids,
        params=postprocess.PostprocessParams.from_config(config)).items()}
    count = int(want["num_detections"][0])
    assert count > 10, "few detections: a vacuous comparison"
    assert int(served["num_detections"][0]) == count
    ids = np.array([cid for cid, _ in coco_categories.CATEGORIES], np.float32)
    np.testing.assert_array_equal(served["detection_classes"][0, :count],
                                  ids[want["detection_classes"][0, :count]])
    np.testing.assert_allclose(served["detection_scores"][0, :count],
                               want["detection_scores"][0, :count], rtol=0, atol=1e-5)
    size = np.tile(np.array(image.shape[:2], np.float32), 2)
    np.testing.assert_allclose(served["detection_boxes"][0, :count] * size,
                               want["detection_boxes"][0, :count], rtol=0, atol=1e-2)


@pytest.mark.slow
def test_only_reading_a_pth_file_needs_pytorch():
    """Importing every paa_tf module (the importer's included) loads no PyTorch: training,
    evaluation and serving never need it."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys\n"
            "import paa_tf\n"
            "for m in pkgutil.walk_packages(paa_tf.__path__, 'paa_tf.'):\n"
            "    importlib.import_module(m.name)\n"
            "assert 'torch' not in sys.modules\n"
            "print('torch-free')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch-free" in out.stdout
