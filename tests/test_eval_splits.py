"""`bin/paa_eval` names the data it evaluates and gives each split its own result folder."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow  # two evaluations in subprocesses
def test_two_splits_evaluated_from_one_run_leave_two_result_sets(repo_root, tmp_path):
    from tests.test_predict import tiny_run

    _, _, model_dir, paths = tiny_run(tmp_path, num_val=3)
    script = str(repo_root / "bin" / "paa_eval")
    val = subprocess.run([sys.executable, script, f"--model_dir={model_dir}"],
                         capture_output=True, text=True, timeout=300)
    assert val.returncode == 0, val.stderr[-3000:]
    assert f"evaluating 'val' ({paths['val_image_dir']}) into {model_dir}/eval/val" in val.stdout
    train = subprocess.run([sys.executable, script, f"--model_dir={model_dir}",
                            f"--image_dir={paths['train_image_dir']}",
                            f"--annotations={paths['train_annotation_file']}"],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "evaluating 'train'" in train.stdout and "\ntrain: AP " in train.stdout
    counts = {split: json.loads((model_dir / "eval" / split / "metrics.json").read_text())
              ["num_images"] for split in ("val", "train")}
    assert counts == {"val": 3, "train": 2}
