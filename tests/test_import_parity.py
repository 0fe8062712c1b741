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
from paa_tf import export, postprocess
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
    assert cli_import(["--checkpoint", checkpoint, "--output", run_dir]) == 0
    config = config_lib.load_config(run_dir / "config.yaml")
    model = export.restore_model(config, tf.train.latest_checkpoint(str(run_dir)),
                                 (HEIGHT, WIDTH))
    return {"source": source, "network": network, "checkpoint": checkpoint,
            "run_dir": run_dir, "config": config, "model": model}


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


def test_every_level_output_matches_the_reference(imported):
    image = rgb_image(1)
    with torch.no_grad():
        expected = ref.to_paa_layout(imported["network"](reference_input(imported["source"],
                                                                          image)))
    outputs = {k: v.numpy() for k, v in imported["model"](paa_input(imported["config"], image),
                                                          training=False).items()}
    level_sizes = np.bincount(imported["model"].level_ids)
    starts = np.concatenate([[0], np.cumsum(level_sizes)])
    worst = {}
    for name, levels in expected.items():
        for level, want in enumerate(levels):
            got = outputs[name][:, starts[level]:starts[level + 1]]
            assert got.shape == want.shape, (name, level)
            error = _relative_error(got, want)
            worst[name] = max(worst.get(name, 0.0), error)
            assert error < RELATIVE_TOLERANCE, (
                f"{imported['source']} {name} P{level + 3}: max |diff| / max |ref| = {error:.2e}")
    print(f"\n{imported['source']}: largest relative difference per output {worst}")


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


def test_detections_match_after_the_references_post_processing(imported):
    """Same detections from the reference's outputs and paa-tf's, with the preset's rules."""
    config = imported["config"]
    assert config.eval.candidate_rule == ("mm" if imported["source"] == "mmdet" else "kk")
    image = rgb_image(3)
    with torch.no_grad():
        levels = ref.to_paa_layout(imported["network"](reference_input(imported["source"],
                                                                       image)))
    expected_raw = {k: np.concatenate(v, axis=1) for k, v in levels.items()}
    model = imported["model"]
    got_raw = {k: v.numpy() for k, v in model(paa_input(config, image), training=False).items()}
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
