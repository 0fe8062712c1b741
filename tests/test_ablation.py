"""bin/paa_ablate: the Table 1 rows as configs, the report's statistics, and a tiny real run."""

import json
import os
import pathlib
import statistics
import subprocess
import sys

import pytest

from paa_tf import config as config_lib
from paa_tf.data import synthetic
from paa_tf.experiments import ablation

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


@pytest.mark.parametrize("row", ablation.ROWS, ids=lambda r: r.name)
def test_every_row_is_a_valid_config_that_differs_as_named(row):
    config = config_lib.load_config(
        str(QUICKSTART), list(row.overrides) + list(ablation.budget_overrides(800, 2)))
    name = row.name.lower()
    expected_method = "iou" if "iou assignment" in name else "atss" if "atss" in name else "paa"
    assert config.assign.method == expected_method
    expected_aux = ("centerness" if "centerness" in name else
                    "iou" if ("iou pred" in name or row.group == "separation") else "none")
    assert config.model.aux_head == expected_aux
    if name.startswith("separation ("):
        letter = name[len("separation (")]
        assert config.assign.separation == ("kk_c" if letter == "c" else letter)
    if name.startswith("fnp"):
        assert (config.assign.separation, config.assign.fnp_count) == ("fnp", int(name[4:]))
    if name.startswith("fsr"):
        assert config.assign.separation == "fsr"
        assert config.assign.fsr_threshold == float(name.split(">")[1])
    # Same budget for every row: the quickstart's schedule compressed to 800 steps.
    assert config.train.total_steps == 800
    assert config.train.lr_steps == (657, 757)  # 800 * 2300/2800, 800 * 2650/2800
    assert (config.train.seed, config.data.seed) == (2, 2)
    assert config.model.backbone == "tiny"


def test_shared_trainings_and_voting_rows():
    keys = ablation.trainings()
    assert len(keys) == 15  # 19 rows: voting, separation (c) and diagnostics reuse trainings
    voting = [r for r in ablation.ROWS if r.voting]
    assert [r.training for r in voting] == ["paa_ioupred"]
    assert all(not r.voting for r in ablation.ROWS if r.name != "PAA + IoU pred + score voting")
    with pytest.raises(ValueError, match="disagree"):
        ablation.trainings([ablation.Row("x", "modules", "k", ("a=1",)),
                            ablation.Row("y", "modules", "k", ("a=2",))])
    with pytest.raises(ValueError, match="unknown ablation rows"):
        ablation.select_rows(["paa", "nonsense"])
    assert {r.training for r in ablation.select_rows(["paa_ioupred"])} == {"paa_ioupred"}
    assert len(ablation.select_rows(["paa_ioupred"])) == 4  # + voting, (c), ranked by p
    assert {r.score for r in ablation.ROWS if r.group == "diagnostic"} == {"cls"}


def _write_metrics(output_dir, training, seed, voting, ap, ap50):
    path = pathlib.Path(ablation.eval_dir(ablation.run_dir(output_dir, training, seed), voting))
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"AP": ap, "AP50": ap50}))


def test_report_statistics_failures_and_missing_runs(tmp_path):
    aps = {0: 0.41, 1: 0.47, 2: 0.38}
    for seed, ap in aps.items():
        _write_metrics(tmp_path, "paa_ioupred", seed, False, ap, ap + 0.2)
    _write_metrics(tmp_path, "paa_ioupred", 0, True, 0.43, 0.6)
    _write_metrics(tmp_path, "iou", 0, False, 0.30, 0.5)
    failed = pathlib.Path(ablation.run_dir(tmp_path, "fsr0.2", 0))
    failed.mkdir(parents=True)
    (failed / "FAILED.json").write_text(json.dumps({"reason": "training exited with code 3"}))

    records = {r["name"]: r for r in ablation.write_report(str(tmp_path), [0, 1, 2], 800)}
    full = records["PAA + IoU pred"]["AP"]
    values = [100 * v for v in aps.values()]
    assert full["n"] == 3
    assert full["mean"] == pytest.approx(statistics.fmean(values))
    assert full["std"] == pytest.approx(statistics.stdev(values))
    assert (full["min"], full["max"]) == pytest.approx((38.0, 47.0))
    assert records["Separation (c) (project default)"]["AP"] == full
    assert records["PAA + IoU pred + score voting"]["AP"]["mean"] == pytest.approx(43.0)
    assert records["IoU assignment"]["AP"]["n"] == 1 and records["PAA"]["AP"]["n"] == 0
    assert records["FSR > 0.2"]["failures"] == ["seed 0: training exited with code 3"]

    table = (tmp_path / "ablations.md").read_text()
    assert "| PAA + IoU pred | 40.8 | 42.0 ± 4.6 (38.0–47.0) | 62.0 ± 4.6 (58.0–67.0) | 0, 1, 2 |" \
        in table
    assert "| IoU assignment | 34.6 | 30.0 | 50.0 | 0 |" in table
    assert "| PAA | 39.9 | – | – | – |" in table
    assert "seed 0: training exited with code 3" in table
    assert (tmp_path / "ablations.png").stat().st_size > 10_000

    checks = {(c["better"], c["worse"]): c for c in ablation.orderings(records.values())}
    voting = checks[("PAA + IoU pred + score voting", "PAA + IoU pred")]
    assert (voting["seeds"], voting["diffs"], voting["verdict"]) == ([0], [2.0], "held")
    vs_iou = checks[("PAA + IoU pred", "IoU assignment + IoU pred")]
    assert vs_iou["verdict"] == "not run"  # no IoU + IoU pred run
    assert json.loads((tmp_path / "ablations.json").read_text())["total_steps"] == 800

    # A run of another budget in the same folder is an error, never averaged in.
    (pathlib.Path(ablation.run_dir(tmp_path, "iou", 0)) / "config.yaml").write_text(
        "train:\n  total_steps: 500\n")
    with pytest.raises(ValueError, match="holds a 500-step training, not 800 steps"):
        ablation.write_report(str(tmp_path), [0, 1, 2], 800)
    assert "| PAA + IoU pred + score voting >= PAA + IoU pred | +2.0 (seed 0) | +2.0 | held |" \
        in table


def test_orderings_verdicts_are_paired_by_seed():
    def rec(name, per_seed):
        return {"name": name, "per_seed": per_seed}

    names = {n for pair in ablation.ORDERINGS for n in pair[:2]}
    base = {n: rec(n, {}) for n in names}
    base["PAA"] = rec("PAA", {0: 30.0, 1: 25.0, 2: 31.0})
    base["IoU assignment"] = rec("IoU assignment", {0: 29.0, 1: 26.0, 3: 10.0})
    base["ATSS + IoU pred"] = rec("ATSS + IoU pred", {0: 20.0, 1: 21.0})
    base["ATSS + centerness"] = rec("ATSS + centerness", {0: 20.0, 1: 21.0})
    base["PAA + IoU pred"] = rec("PAA + IoU pred", {0: 20.0, 1: 22.0})
    base["PAA + centerness"] = rec("PAA + centerness", {0: 21.0, 1: 22.5})
    checks = {(c["better"], c["worse"]): c for c in ablation.orderings(base.values())}
    paa = checks[("PAA", "IoU assignment")]
    assert (paa["seeds"], paa["diffs"], paa["verdict"]) == ([0, 1], [1.0, -1.0], "mixed")
    assert checks[("ATSS + IoU pred", "ATSS + centerness")]["verdict"] == "held"  # ties, >=
    centerness = checks[("PAA + IoU pred", "PAA + centerness")]
    assert (centerness["verdict"], centerness["mean_diff"]) == ("did not hold", -0.75)


@pytest.mark.slow
def test_tiny_ablation_run_trains_scores_reuses_and_records_failures(tmp_path):
    paths = synthetic.make_shapes_dataset(tmp_path / "shapes", num_train=16, num_val=4,
                                          image_size=128, seed=5)
    extra = (f"data.train_images={paths['train_image_dir']},"
             f"data.train_annotations={paths['train_annotation_file']},"
             f"data.val_images={paths['val_image_dir']},"
             f"data.val_annotations={paths['val_annotation_file']},"
             "data.min_size=[128],data.max_size=128,data.image_size=[128,128],"
             "model.fpn_channels=32,model.head_channels=32,model.head_convs=1,"
             "train.batch_size=2,eval.batch_size=4")
    out = tmp_path / "out"

    def ablate(rows, extra_overrides):
        command = [sys.executable, str(REPO / "bin" / "paa_ablate"), "--output_dir", str(out),
                   "--steps", "2", "--seeds", "0", "--rows", rows,
                   "--override", extra_overrides]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                              timeout=600)

    result = ablate("paa_ioupred", extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    model_dir = pathlib.Path(ablation.run_dir(out, "paa_ioupred", 0))
    assert (model_dir / "ckpt-2.index").is_file()
    for voting, score in ((False, ""), (True, ""), (False, "cls")):
        metrics = json.loads((pathlib.Path(ablation.eval_dir(model_dir, voting, score))
                              / "metrics.json").read_text())
        assert metrics["num_images"] == 4
        saved = json.loads((pathlib.Path(ablation.eval_dir(model_dir, voting, score))
                            / "results.json").read_text())
        assert len(saved) == metrics["num_detections"]
    log = (model_dir / "ablate.log").read_text()
    assert "eval.score_voting=true " in log and "eval.score_voting=false,eval.score=cls" in log
    saved = config_lib.load_config(str(model_dir / "config.yaml"))
    assert (saved.train.total_steps, saved.model.head_channels) == (2, 32)

    # A second call reuses the finished run; a failing training is recorded, not fatal.
    stamp = (model_dir / "ckpt-2.index").stat().st_mtime_ns
    result = ablate("paa_ioupred,fsr0.2", extra + ",train.batch_size=0")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (model_dir / "ckpt-2.index").stat().st_mtime_ns == stamp
    assert "training fsr0.2 seed 0" in result.stdout
    assert "training paa_ioupred" not in result.stdout
    table = (out / "ablations.md").read_text()
    assert "| FSR > 0.2 | 19.3 | – | – | – | seed 0: training exited with code" in table
    failure = json.loads((pathlib.Path(ablation.run_dir(out, "fsr0.2", 0)) / "FAILED.json")
                         .read_text())["reason"]
    # The program's own error, not just an exit code.
    assert "'train.batch_size' is 0; it must be at least 1" in failure

    # Another budget in the same folder stops with the folder named, before any training.
    result = subprocess.run(
        [sys.executable, str(REPO / "bin" / "paa_ablate"), "--output_dir", str(out), "--steps",
         "3", "--seeds", "0", "--rows", "paa_ioupred", "--override", extra],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode != 0
    assert "holds a 2-step training, not 3 steps" in result.stderr
    assert not (model_dir / "ckpt-3.index").exists()
