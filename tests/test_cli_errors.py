"""Every program ends bad input with one paragraph and exit code 2 (paa_tf/cli/errors.py);
evaluation, export and prediction fall back past a damaged newest checkpoint (issue 16)."""

import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.data import label_map as label_map_lib
from paa_tf.modeling.detector import build_detector
from paa_tf.modeling.restore import restore_run
from paa_tf.run_folder import RunFolder
from paa_tf.serving import export
from paa_tf.visualization import predict

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ["data.image_size=[128,128]", "data.min_size=[128]", "data.max_size=128",
             "model.fpn_channels=32", "model.head_channels=32", "model.head_convs=1",
             "model.num_classes=6"]


@pytest.fixture(scope="module")
def run_with_damaged_newest(tmp_path_factory):
    """A training folder with ckpt-7 (good) and ckpt-8 (data file damaged)."""
    model_dir = tmp_path_factory.mktemp("run")
    config = config_lib.load_config(REPO / "configs" / "quickstart.yaml", overrides=OVERRIDES)
    model = build_detector(config)
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(
        label_map_lib.LabelMap(ids=tuple(range(1, 7)), names=tuple("abcdef")), model_dir)
    step = tf.Variable(7, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step, model=model),
                                         str(model_dir), max_to_keep=3)
    manager.save(checkpoint_number=7)
    manager.save(checkpoint_number=8)
    for path in model_dir.glob("ckpt-8.data-*"):
        path.write_bytes(path.read_bytes()[:100])  # truncated: IndexError in the reader
    return config, model_dir


@pytest.mark.slow
def test_the_run_folder_falls_back_past_a_damaged_newest_checkpoint(run_with_damaged_newest,
                                                                     capsys):
    config, model_dir = run_with_damaged_newest
    _, path = restore_run(RunFolder(model_dir), config, (128, 128))
    assert path == str(model_dir / "ckpt-7")
    assert f"checkpoint {model_dir / 'ckpt-8'} cannot be restored; falling back to " \
           f"{model_dir / 'ckpt-7'}" in capsys.readouterr().err
    # A checkpoint the user names is restored or refused, never replaced by another.
    with pytest.raises(ValueError, match=r"ckpt-8 does not match .* or is damaged"):
        restore_run(RunFolder(model_dir), config, (128, 128), str(model_dir / "ckpt-8"))


@pytest.mark.slow
def test_predict_falls_back_past_a_damaged_newest_checkpoint(run_with_damaged_newest, capsys):
    _, model_dir = run_with_damaged_newest
    predictor = predict.Predictor(model_dir)
    assert predictor.checkpoint == str(model_dir / "ckpt-7")
    assert "ckpt-8 cannot be restored" in capsys.readouterr().err


@pytest.mark.slow  # ~30 s: writes a SavedModel
def test_export_falls_back_past_a_damaged_newest_checkpoint(run_with_damaged_newest, tmp_path,
                                                            capsys):
    _, model_dir = run_with_damaged_newest
    path = export.export_from_model_dir(model_dir, tmp_path)
    assert path == str(tmp_path / "1")
    assert "ckpt-8 cannot be restored; falling back to" in capsys.readouterr().err
    # An explicitly named damaged checkpoint is an error naming it, not a fallback.
    with pytest.raises(ValueError, match=r"ckpt-8 does not match .* or is damaged: IndexError"):
        export.export_from_model_dir(model_dir, tmp_path, checkpoint=str(model_dir / "ckpt-8"),
                                     version=2)


def run_program(name, *args):
    return subprocess.run([sys.executable, str(REPO / "bin" / name), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})


def bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'quickstart.yaml'}\ntrain:\n  base_lr: -1e-3\n")
    return str(path)


# (program, arguments, words the message must contain)
BAD_INPUTS = {
    "paa_train config": ("paa_train", lambda t: ["--config", bad_config(t), "--model_dir",
                                                 str(t / "m")], "'train.base_lr' is -0.001"),
    "paa_train data": ("paa_train", lambda t: ["--config", "configs/quickstart.yaml",
                                               "--model_dir", str(t / "m"), "--override",
                                               f"data.train_annotations={t}/none.json"],
                       "none.json"),
    "paa_eval config": ("paa_eval", lambda t: ["--config", bad_config(t), "--model_dir",
                                               str(t)], "'train.base_lr' is -0.001"),
    "paa_export": ("paa_export", lambda t: ["--model_dir", str(t), "--export_dir", str(t / "e")],
                   "config.yaml not found"),
    "paa_predict": ("paa_predict", lambda t: ["--model_dir", str(t), "--images", str(t),
                                              "--output_dir", str(t / "o")],
                    "holds no image files"),
    "paa_visualize": ("paa_visualize", lambda t: ["--model_dir", str(t), "--data_index=0",
                                                  "--output", str(t / "v.png")], "config.yaml"),
    "paa_make_tfrecord": ("paa_make_tfrecord", lambda t: ["--format=coco",
                                                          f"--annotations={t}/none.json",
                                                          f"--image_dir={t}",
                                                          f"--output_prefix={t}/r"],
                          "none.json"),
    "paa_import": ("paa_import", lambda t: [f"--torch_checkpoint={t}/none.pth",
                                            f"--output_dir={t}/o"],
                   "none.pth"),
    "paa_make_shapes flag": ("paa_make_shapes", lambda t: ["--num_train=0"], "num_train"),
    "paa_ablate": ("paa_ablate", lambda t: ["--rows=nonsense", f"--output_dir={t}"],
                   "nonsense"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_paragraph_and_exit_code_2(case, tmp_path):
    program, make_args, words = BAD_INPUTS[case]
    result = run_program(program, *make_args(tmp_path))
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{program}: error: " in result.stderr and words in result.stderr, result.stderr


@pytest.mark.slow
def test_the_traceback_flag_shows_the_traceback(tmp_path):
    result = run_program("paa_train", "--config", bad_config(tmp_path), "--model_dir",
                         str(tmp_path / "m"), "--traceback")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "ConfigError" in result.stderr
    assert "paa_train: error: config key 'train.base_lr'" in result.stderr


def test_exit_codes_follow_one_convention(capsys):
    from paa_tf.cli import errors
    from paa_tf.training import train as train_lib

    assert errors.exit_code_of(train_lib.NonFiniteWeightsError("inf weights")) == 3
    assert errors.exit_code_of(train_lib.NonFiniteLossError("nan loss")) == 3
    assert errors.exit_code_of(config_lib.ConfigError("bad key")) == 2
    assert errors.exit_code_of(FileNotFoundError("no such file")) == 2
    op_error = tf.errors.InvalidArgumentError(None, None, "bad image\n\t [[{{node Decode}}]]")
    assert errors.exit_code_of(op_error) == 2 and errors.message_of(op_error) == "bad image"
    assert errors.exit_code_of(TypeError("a bug")) is None

    def buggy(argv):
        raise TypeError("a bug")
    with pytest.raises(TypeError):  # bugs keep their traceback
        errors.guarded(buggy, "paa_x")([])
