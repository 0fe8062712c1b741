"""The paper's Table 1 ablations at quickstart scale: rows, runs and the report.

Each row of Table 1 (Kim & Lee 2020) becomes a set of config overrides on top of the
quickstart experiment (tiny backbone, generated shapes dataset). Rows that differ only at
test time share one training: "+ score voting" evaluates the "PAA + IoU pred" model with
voting on, and separation (c) is that same model, since (c) is the project default.

Layout under the output folder::

    runs/<training>/seed<k>/            model_dir of one training (checkpoints, config.yaml)
    runs/<training>/seed<k>/eval/val_voting|val_plain[_<score>]/metrics.json
    ablations.json, ablations.md, ablations.png
"""

import dataclasses
import json
import math
import os
import statistics
from typing import Dict, List, Optional, Tuple

from paa_tf.run_folder import RunFolder


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table.

    name: the label printed in the table (the paper's wording).
    group: 'modules' (Table 1 right) or 'separation' (Table 1 left).
    training: key of the training it evaluates; rows with the same key share it.
    overrides: config overrides of that training (on top of the quickstart config).
    voting: evaluate with score voting.
    score: eval.score to rank detections with ('' = the config's, sqrt(p*q)).
    paper_ap: the paper's COCO minival AP (R50, 135k iterations), or None.
    """

    name: str
    group: str
    training: str
    overrides: Tuple[str, ...]
    voting: bool = False
    paper_ap: Optional[float] = None
    score: str = ""


_IOU_PRED = "model.aux_head=iou"
_CENTERNESS = "model.aux_head=centerness"
_NO_AUX = "model.aux_head=none"

# Paper numbers: Table 1 of Kim & Lee (ECCV 2020), COCO minival, ResNet-50, 135k iterations.
ROWS: Tuple[Row, ...] = (
    Row("IoU assignment", "modules", "iou", ("assign.method=iou", _NO_AUX), paper_ap=34.6),
    Row("IoU assignment + IoU pred", "modules", "iou_ioupred",
        ("assign.method=iou", _IOU_PRED), paper_ap=36.0),
    Row("PAA", "modules", "paa", ("assign.method=paa", _NO_AUX), paper_ap=39.9),
    Row("PAA + centerness", "modules", "paa_centerness", ("assign.method=paa", _CENTERNESS),
        paper_ap=39.8),
    Row("PAA + IoU pred", "modules", "paa_ioupred", ("assign.method=paa", _IOU_PRED),
        paper_ap=40.8),
    Row("PAA + IoU pred + score voting", "modules", "paa_ioupred",
        ("assign.method=paa", _IOU_PRED), voting=True, paper_ap=41.0),
    Row("ATSS + centerness", "modules", "atss_centerness", ("assign.method=atss", _CENTERNESS),
        paper_ap=39.4),
    Row("ATSS + IoU pred", "modules", "atss_ioupred", ("assign.method=atss", _IOU_PRED),
        paper_ap=39.8),
    Row("Separation (a)", "separation", "sep_a", ("assign.separation=a", _IOU_PRED),
        paper_ap=40.5),
    Row("Separation (b)", "separation", "sep_b", ("assign.separation=b", _IOU_PRED),
        paper_ap=40.8),
    Row("Separation (c) (project default)", "separation", "paa_ioupred",
        ("assign.method=paa", _IOU_PRED), paper_ap=40.6),
    Row("Separation (d)", "separation", "sep_d", ("assign.separation=d", _IOU_PRED),
        paper_ap=40.7),
    Row("FNP 5", "separation", "fnp5", ("assign.separation=fnp", "assign.fnp_count=5", _IOU_PRED),
        paper_ap=39.5),
    Row("FNP 10", "separation", "fnp10",
        ("assign.separation=fnp", "assign.fnp_count=10", _IOU_PRED), paper_ap=40.1),
    Row("FNP 20", "separation", "fnp20",
        ("assign.separation=fnp", "assign.fnp_count=20", _IOU_PRED), paper_ap=40.0),
    Row("FSR > 0.1", "separation", "fsr0.1",
        ("assign.separation=fsr", "assign.fsr_threshold=0.1", _IOU_PRED), paper_ap=23.8),
    Row("FSR > 0.2", "separation", "fsr0.2",
        ("assign.separation=fsr", "assign.fsr_threshold=0.2", _IOU_PRED), paper_ap=19.3),
    # Not in the paper: the IoU head trained but unused at test time, to tell its effect on
    # training (features, gradients) from its effect on ranking detections.
    Row("IoU assignment + IoU pred, ranked by p alone", "diagnostic", "iou_ioupred",
        ("assign.method=iou", _IOU_PRED), score="cls"),
    Row("PAA + IoU pred, ranked by p alone", "diagnostic", "paa_ioupred",
        ("assign.method=paa", _IOU_PRED), score="cls"),
)


def trainings(rows=ROWS) -> Dict[str, Tuple[str, ...]]:
    """{training key: overrides}, in row order; a key's rows must agree on the overrides."""
    out: Dict[str, Tuple[str, ...]] = {}
    for row in rows:
        if row.training in out and out[row.training] != row.overrides:
            raise ValueError(f"rows sharing training {row.training!r} disagree on overrides: "
                             f"{out[row.training]} vs {row.overrides}")
        out.setdefault(row.training, row.overrides)
    return out


def select_rows(names: Optional[List[str]]) -> Tuple[Row, ...]:
    """ROWS whose training key or name is in `names` (all rows when `names` is empty)."""
    if not names:
        return ROWS
    wanted = set(names)
    known = {r.training for r in ROWS} | {r.name for r in ROWS}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; choose training keys from "
                         f"{sorted({r.training for r in ROWS})}")
    return tuple(r for r in ROWS if r.training in wanted or r.name in wanted)


def budget_overrides(total_steps: int, seed: int) -> Tuple[str, ...]:
    """Overrides giving every training the same budget: the quickstart schedule, scaled.

    The quickstart decays the LR at 2300/2800 and 2650/2800 of its steps; the same fractions
    are kept so a shorter budget is the same recipe, compressed. The seed sets both the
    initialisation (train.seed) and the data order and augmentation (data.seed).
    """
    first, second = round(total_steps * 2300 / 2800), round(total_steps * 2650 / 2800)
    warmup = min(100, max(1, total_steps // 10))
    return (f"train.total_steps={total_steps}", f"train.lr_steps=[{first},{second}]",
            f"train.warmup_steps={warmup}", f"train.checkpoint_every={total_steps}",
            f"train.log_every={max(1, total_steps // 10)}", f"train.seed={seed}",
            f"data.seed={seed}")


def run_dir(output_dir, training, seed):
    return os.path.join(output_dir, "runs", training, f"seed{seed}")


def check_budget(model_dir, steps):
    """Raises ValueError if `model_dir` holds a training of another length than `steps`.

    Runs of different budgets must not be resumed into each other or averaged together.
    """
    run = RunFolder(model_dir)
    if not run.has_config():
        return
    found = run.config().train.total_steps
    if found != steps:
        raise ValueError(f"{model_dir} holds a {found}-step training, not {steps} steps; give "
                         f"--steps {found} or another --output_dir")


def eval_dir(model_dir, voting, score=""):
    """The run folder's evaluation folder of one row's val evaluation (`RunFolder.eval_dir`)."""
    name = "val_voting" if voting else "val_plain"
    return str(RunFolder(model_dir).eval_dir(f"{name}_{score}" if score else name))


def load_run(model_dir, voting, score="") -> Optional[dict]:
    """metrics.json of one evaluation, a {'failed': reason} record, or None if not run."""
    failure = os.path.join(model_dir, "FAILED.json")
    if os.path.isfile(failure):
        with open(failure) as f:
            return {"failed": json.load(f).get("reason", "failed")}
    path = os.path.join(eval_dir(model_dir, voting, score), "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def summarise(values: List[float]) -> dict:
    """mean, sample standard deviation (None below 2 values), min, max and n of `values`."""
    n = len(values)
    return {"n": n, "mean": statistics.fmean(values) if n else math.nan,
            "std": statistics.stdev(values) if n > 1 else None,
            "min": min(values) if n else math.nan, "max": max(values) if n else math.nan}


def collect(output_dir, seeds, steps, rows=ROWS) -> List[dict]:
    """One record per row: AP / AP50 summaries over the seeds found, and failures."""
    records = []
    for row in rows:
        aps, ap50s, failures, per_seed = [], [], [], {}
        for seed in seeds:
            model_dir = run_dir(output_dir, row.training, seed)
            check_budget(model_dir, steps)
            metrics = load_run(model_dir, row.voting, row.score)
            if metrics is None:
                continue
            if "failed" in metrics:
                failures.append(f"seed {seed}: {metrics['failed']}")
                continue
            aps.append(100.0 * metrics["AP"])
            ap50s.append(100.0 * metrics["AP50"])
            per_seed[seed] = round(100.0 * metrics["AP"], 2)
        records.append({"name": row.name, "group": row.group, "training": row.training,
                        "voting": row.voting, "paper_ap": row.paper_ap, "AP": summarise(aps),
                        "AP50": summarise(ap50s), "per_seed": per_seed, "failures": failures})
    return records


# The paper's orderings checked by the report: (better row, worse row, relation).
ORDERINGS: Tuple[Tuple[str, str, str], ...] = (
    ("PAA", "IoU assignment", ">"),
    ("PAA + IoU pred", "IoU assignment + IoU pred", ">"),
    ("PAA + IoU pred", "PAA + centerness", ">="),
    ("ATSS + IoU pred", "ATSS + centerness", ">="),
    ("PAA + IoU pred + score voting", "PAA + IoU pred", ">="),
)


def orderings(records) -> List[dict]:
    """Each paper ordering compared seed by seed (AP points, ours).

    A relation holds when it holds for every seed both rows have, fails when the opposite
    strict relation holds for every seed, and is 'mixed' otherwise; a '>=' relation with all
    differences zero holds.
    """
    by_name = {r["name"]: r for r in records}
    out = []
    for better, worse, relation in ORDERINGS:
        a, b = by_name[better]["per_seed"], by_name[worse]["per_seed"]
        seeds = sorted(set(a) & set(b))
        diffs = [round(a[s] - b[s], 2) for s in seeds]
        if not diffs:
            verdict = "not run"
        elif all(d > 0 for d in diffs) or (relation == ">=" and all(d >= 0 for d in diffs)):
            verdict = "held"
        elif all(d < 0 for d in diffs):
            verdict = "did not hold"
        else:
            verdict = "mixed"
        out.append({"better": better, "worse": worse, "relation": relation, "seeds": seeds,
                    "diffs": diffs, "mean_diff": statistics.fmean(diffs) if diffs else None,
                    "verdict": verdict})
    return out


def orderings_table(checks) -> str:
    lines = ["| paper's ordering | AP difference per seed (points) | mean | at this scale |",
             "| --- | --- | --- | --- |"]
    for c in checks:
        per_seed = ", ".join(f"{d:+.1f} (seed {s})" for s, d in zip(c["seeds"], c["diffs"]))
        mean = "–" if c["mean_diff"] is None else f"{c['mean_diff']:+.1f}"
        lines.append(f"| {c['better']} {c['relation']} {c['worse']} | {per_seed or '–'} | "
                     f"{mean} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def _cell(summary):
    if not summary["n"]:
        return "–"
    text = f"{summary['mean']:.1f}"
    if summary["n"] > 1:
        text += f" ± {summary['std']:.1f} ({summary['min']:.1f}–{summary['max']:.1f})"
    return text


def markdown_table(records) -> str:
    """The table: paper AP beside ours (mean ± sample std (min–max) over seeds, in %)."""
    lines = ["| row | paper AP (R50, COCO) | AP (%) | AP50 (%) | seeds | notes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for group, title in (("modules", "Effects of individual methods (Table 1 right)"),
                         ("separation", "Separation boundaries, FNP, FSR (Table 1 left)"),
                         ("diagnostic", "Diagnostic, not in the paper")):
        lines.append(f"| **{title}** | | | | | |")
        for rec in (r for r in records if r["group"] == group):
            paper = "–" if rec["paper_ap"] is None else f"{rec['paper_ap']:.1f}"
            seeds = ", ".join(str(s) for s in sorted(rec["per_seed"])) or "–"
            notes = "; ".join(rec["failures"])
            if rec["training"] == "paa_ioupred" and rec["group"] == "separation":
                notes = (notes + "; " if notes else "") + "same runs as PAA + IoU pred"
            lines.append(f"| {rec['name']} | {paper} | {_cell(rec['AP'])} | "
                         f"{_cell(rec['AP50'])} | {seeds} | {notes} |")
    return "\n".join(lines) + "\n"


def bar_chart(records, path, title):
    """Horizontal bars of our mean AP (whiskers: min–max, dots: seeds) beside the paper's AP."""
    # matplotlib only for the chart (slow to import; its file backend chosen first).
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # once the backend is chosen

    names = [r["name"] for r in records][::-1]
    ours = [r["AP"]["mean"] if r["AP"]["n"] else 0.0 for r in records][::-1]
    low = [r["AP"]["mean"] - r["AP"]["min"] if r["AP"]["n"] > 1 else 0.0 for r in records][::-1]
    high = [r["AP"]["max"] - r["AP"]["mean"] if r["AP"]["n"] > 1 else 0.0 for r in records][::-1]
    paper = [r["paper_ap"] or 0.0 for r in records][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.38 * len(records) + 1.5), sharey=True)
    axes[0].barh(names, ours, xerr=[low, high], color="#3b7dd8", capsize=3)
    for y, rec in enumerate(records[::-1]):  # each seed's AP as a dot
        seeds = list(rec["per_seed"].values())
        axes[0].plot(seeds, [y] * len(seeds), "o", color="black", markersize=3)
    axes[0].set_title("this repo: quickstart model, generated shapes (AP %, dots: seeds)")
    lo = min((v - e for v, e, r in zip(ours, low, records[::-1]) if r["AP"]["n"]), default=0)
    axes[0].set_xlim(max(0.0, lo - 5), max([v + h for v, h in zip(ours, high)] + [1.0]) + 3)
    axes[1].barh(names, paper, color="#999999")
    axes[1].set_title("paper: R50, COCO minival (AP %)")
    axes[1].set_xlim(15, 43)
    # Value labels right of the whiskers, so that they stay readable.
    for ax, values, ends in ((axes[0], ours, [v + h for v, h in zip(ours, high)]),
                             (axes[1], paper, paper)):
        for y, (v, end) in enumerate(zip(values, ends)):
            if v:
                ax.text(end + 0.3, y, f"{v:.1f}", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(output_dir, seeds, steps, rows=ROWS) -> List[dict]:
    """ablations.json, ablations.md and ablations.png in `output_dir` from the finished runs."""
    records = collect(output_dir, seeds, steps, rows)
    with open(os.path.join(output_dir, "ablations.json"), "w") as f:
        json.dump({"total_steps": steps, "seeds": list(seeds), "rows": records}, f, indent=1)
    with open(os.path.join(output_dir, "ablations.md"), "w") as f:
        f.write(f"Quickstart model, {steps} steps of 8 images per training, seeds "
                f"{', '.join(map(str, seeds))}; AP on the 200 generated val images.\n\n")
        f.write(markdown_table(records))
        f.write("\n" + orderings_table(orderings(records)))
    bar_chart(records, os.path.join(output_dir, "ablations.png"),
              f"PAA ablations (Table 1) at quickstart scale, {steps} steps")
    return records
