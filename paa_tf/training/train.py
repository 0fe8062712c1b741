"""The training loop behind `bin/paa_train`.

One step = one optimizer update on a global batch, run by the detector's own
`train_step` (assignment -> targets -> losses -> gradients) under the chosen
`tf.distribute` strategy. Around it: resume from the newest readable
checkpoint, periodic atomic checkpoints, TensorBoard summaries, a progress
line, a stop on a non-finite or diverging loss that keeps the last good
checkpoint, and optional periodic COCO evaluation.

A checkpoint is good once a loss computed from its weights was finite and in line with the
steps before it: the loss of step N+1 judges the weights saved after step N
(paa_tf/training/good_checkpoints.py records it, paa_tf/training/divergence.py judges).
On a bad loss the run stops, names the newest good checkpoint and moves the ones written
after it into `diverged-<step>/` in the run folder, so that the next run resumes from a
checkpoint that trains on.
"""

import copy
import json
import math
import pathlib
import time

import numpy as np
import tensorflow as tf
import tf_keras

from paa_tf import run_folder
from paa_tf.data import pipeline
from paa_tf.evaluation import evaluate as evaluate_lib
from paa_tf.modeling import detector
from paa_tf.modeling.weights import load_backbone_weights
from paa_tf.run_folder import checkpoint_step
from paa_tf.training import checkpoints, divergence, good_checkpoints, init_from, schedules
from paa_tf.visualization import summaries

_MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or weights: NonFiniteWeightsError; or a
    diverging loss: DivergedLossError)."""

    exit_code = 3  # bin/paa_train's exit code for it (paa_tf/cli/errors.py)


class NonFiniteWeightsError(NonFiniteLossError):
    """An update left NaN or infinite weights although its loss was finite."""


class DivergedLossError(NonFiniteLossError):
    """A finite loss above `train.divergence_factor` x the running median of the steps before."""


@tf.function
def _finite_flags(variables):
    """bool [len(variables)]: whether each variable holds only finite values (one call)."""
    return tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables])


def build_strategy(name="auto"):
    """A `tf.distribute` strategy by name.

    'auto': MirroredStrategy over all local GPUs when there are several, else one device;
    'one_device': the first GPU, or the CPU; 'mirrored': every local GPU (or the CPU
    devices); 'multi_worker': MultiWorkerMirroredStrategy configured from TF_CONFIG.
    """
    if name == "multi_worker":
        # Must come first: collective ops are configured before the runtime starts, and
        # listing devices would start it.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose auto, one_device, mirrored or "
                     "multi_worker")


def _format_duration(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def progress_line(step, total, elapsed, steps_done, images_per_step, logs, lr):
    """'step 250/2000 (12%) | ETA 5m20s | 28.3 img/s | loss 1.234 ... | lr 0.0100'."""
    rate = steps_done / elapsed if elapsed > 0 else 0.0
    eta = (total - step) / rate if rate > 0 else float("nan")
    parts = [f"step {step}/{total} ({100.0 * step / total:.0f}%)",
             f"ETA {_format_duration(eta) if math.isfinite(eta) else '?'}",
             f"{rate * images_per_step:.1f} img/s"]
    parts.append(" ".join(f"{name} {value:.4g}" for name, value in logs.items()))
    parts.append(f"lr {lr:.5g}")
    return " | ".join(parts)


def _label_map_source(data):
    """Where the training classes come from, for messages: the label map or the data."""
    if data.label_map:
        return data.label_map
    source = pipeline.describe_source(data, "train")
    return f"the training data ({source})" if source else "the training data"


class Trainer:
    """Builds data, model and optimizer from an `ExperimentConfig` and trains.

    Args:
      config: the resolved `ExperimentConfig`.
      model_dir: folder for checkpoints, `config.yaml`, `label_map.json` and summaries.
      strategy: a `tf.distribute.Strategy` (see `build_strategy`).
      dataset_fn: optional `input_context -> tf.data.Dataset` of per-replica batches
        (tests pass a small in-memory one); defaults to the configured pipeline.
      model: optional prebuilt detector (created under `strategy.scope()`).
    """

    def __init__(self, config, model_dir, strategy, dataset_fn=None, model=None):
        self.config = config
        self.model_dir = pathlib.Path(model_dir)
        self.folder = run_folder.RunFolder(self.model_dir)
        self.strategy = strategy
        self.chief = checkpoints.is_chief(strategy)
        self.data_reports = []  # the input pipeline's bad-record reports, shown at the end
        self.global_batch = config.train.batch_size
        replicas = strategy.num_replicas_in_sync
        if self.global_batch % replicas:
            raise ValueError(f"train.batch_size={self.global_batch} must be divisible by the "
                             f"{replicas} replicas in sync")
        # On one machine a single host pipeline feeds every local replica (one element = a
        # batch per replica, handed out in the step): its iterator is a plain tf.data
        # iterator, which is checkpointed, so a resume continues at the exact input position
        # with one device or several mirrored replicas. A multi-worker distributed iterator
        # cannot be checkpointed: there a resumed run reseeds its shuffling with the restored
        # step instead of replaying the first batches (said in the log, docs/ROBUSTNESS.md).
        self.multi_worker = isinstance(strategy, _MULTI_WORKER)
        self.exact_data_resume = config.train.checkpoint_data and not self.multi_worker
        # Same seed, same initial weights and input order: a run can be repeated, and compared
        # across changes. Set before the input pipeline is built: its shuffles combine their
        # own seeds with this global one, so their order must not depend on what ran earlier.
        tf_keras.utils.set_random_seed(config.train.seed)
        resume_step = checkpoints.latest_step(self.model_dir)
        label_map = None
        if dataset_fn is None:
            seed_offset = 0 if self.exact_data_resume else resume_step
            dataset_fn, label_map = self._pipeline_fn(seed_offset)
        if label_map is not None:  # before anything is built: a wrong count stops here
            run_folder.check_num_classes(config, label_map, _label_map_source(config.data))
        elif config.model.num_classes is None:
            raise ValueError("model.num_classes is not set and there is no label map to take "
                             "it from (a dataset_fn was given): set model.num_classes")
        self.label_map = label_map  # the classes train.init_from carries by name
        if self.chief:
            self.folder.write(config, label_map)
        if self.multi_worker:
            self.dataset = strategy.distribute_datasets_from_function(dataset_fn)
        else:
            self.dataset = dataset_fn(tf.distribute.InputContext(1, 0, replicas))
            if replicas > 1:  # consecutive per-replica batches, one for each replica
                self.dataset = self.dataset.batch(replicas, drop_remainder=True)
        with strategy.scope():
            self.model = model if model is not None else self._build_model()
            self.schedule = schedules.from_config(config.train)
            self.optimizer = tf_keras.optimizers.SGD(
                learning_rate=self.schedule,
                momentum=config.train.momentum)
            if config.train.mixed_precision:
                self.optimizer = tf_keras.mixed_precision.LossScaleOptimizer(self.optimizer)
            self.model.compile(optimizer=self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
        self.iterator = iter(self.dataset)
        # The data iterator is saved too, so a resumed run sees the batches the interrupted
        # one would have seen next (the pipeline shuffles row indices, so its state is small).
        data_state = {"data": self.iterator} if self.exact_data_resume else {}
        self.keeper = checkpoints.CheckpointKeeper(
            self.model_dir, strategy, self.optimizer.iterations,
            max_to_keep=config.train.keep_checkpoints, model=self.model,
            optimizer=self.optimizer, **data_state)
        self.writer = (tf.summary.create_file_writer(str(self.model_dir / "train"))
                       if self.chief else tf.summary.create_noop_writer())
        self._step_fn = None
        self._state_variables = None  # checked for NaN/inf before each save
        # TensorBoard pictures at each periodic evaluation (paa_tf/visualization/summaries.py)
        self.eval_images = None  # the last evaluation's EvalImages
        self.assignment_summaries = summaries.TrainingAssignment(config)
        self.record = good_checkpoints.CheckpointRecord(self.model_dir, writes=self.chief)
        # The public seam of the divergence test: replace it to judge the losses otherwise.
        self.divergence = divergence.DivergenceMonitor(config.train.divergence_factor)
        self._unconfirmed = None  # the checkpoint the next step's loss judges
        self._resumed_from = None
        self._window = (0, 0.0)  # (steps, mean loss) since the loss trackers' last reset

    def _pipeline_fn(self, seed_offset=0):
        data_config = copy.deepcopy(self.config.data)
        data_config.seed += seed_offset
        per_replica = self.global_batch // self.strategy.num_replicas_in_sync
        label_map = pipeline.run_label_map(data_config)

        def dataset_fn(input_context):
            dataset, report = pipeline.build_dataset(
                data_config, split="train", is_training=True, batch_size=per_replica,
                input_context=input_context, plus_one=self.config.model.plus_one)
            self.data_reports.append(report)
            return dataset
        return dataset_fn, label_map

    def _build_model(self):
        # The backbone checkpoint is loaded by restore_or_initialise, on a fresh start only.
        config = copy.deepcopy(self.config)
        config.model.backbone_checkpoint = None
        return detector.build_detector(config, tuple(config.data.image_size))

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def _train_step_fn(self):
        if self._step_fn is None:
            strategy, model = self.strategy, self.model
            split = strategy.num_replicas_in_sync > 1 and not self.multi_worker

            def replica_batch(batches):
                return strategy.experimental_distribute_values_from_function(
                    lambda context: tf.nest.map_structure(
                        lambda t: t[context.replica_id_in_sync_group], batches))

            # The batch is taken from the iterator outside the function: its static shape is
            # then the batch's own bucket (data.buckets), and the step is traced once per
            # bucket shape instead of once for the iterator's unknown [B, None, None, 3].
            @tf.function
            def step_fn(batch):
                batch = replica_batch(batch) if split else batch
                logs = strategy.run(model.train_step, args=(batch,))
                return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                        for name, value in logs.items()}
            self._step_fn = step_fn
        return self._step_fn

    def restore_or_initialise(self):
        """Resume from the newest readable checkpoint, or initialise: from `train.init_from`
        (paa_tf/training/init_from.py) or the backbone from `model.backbone_checkpoint`."""
        if self.config.train.init_from:  # refused on a resume too: the config is wrong
            init_from.refuse_own_run(self.config.train.init_from, self.model_dir)
        try:
            restored = self.keeper.restore_latest()
        except checkpoints.CheckpointMismatchError as error:
            model = self.config.model
            raise ValueError(
                f"{error}: the config describes another model (backbone {model.backbone}, "
                f"{model.num_classes} classes, fpn_channels {model.fpn_channels}, "
                f"head_channels {model.head_channels}, head_convs {model.head_convs}) than the "
                f"one that wrote the checkpoints in {self.model_dir}. A model setting was "
                f"changed since (in {self.folder.config_path}, --config or --override): undo "
                "the change to resume this run, or train the new model in another --model_dir"
            ) from None
        if restored:
            print(f"Resumed from {restored} at step {self.step}", flush=True)
            self._resumed_from = restored
            # Newer ones were unreadable (restore_latest fell back past them): never good.
            self.record.drop([p for p in run_folder.find_checkpoints(self.model_dir)
                              if checkpoint_step(p) > checkpoint_step(restored)])
            self.divergence = divergence.DivergenceMonitor(
                self.config.train.divergence_factor, self.record.recent_losses(restored))
            if not self.record.is_confirmed(restored):
                self._unconfirmed = restored
                print(f"NOTE: no loss has been computed from {restored}'s weights yet (the "
                      "run stopped or was killed right after saving it): this run's first "
                      "step judges it", flush=True)
            if not self.exact_data_resume:
                why = ("train.checkpoint_data is false" if not self.config.train.checkpoint_data
                       else "a multi-worker input iterator cannot be checkpointed")
                print(f"NOTE: the input order is reseeded with the step, not restored ({why}): "
                      "the resumed run sees other batches than an uninterrupted one would",
                      flush=True)
        elif self.config.train.init_from:
            # Every scope covers the backbone: model.backbone_checkpoint is not read.
            report = init_from.initialise(self.model, self.config, self.model_dir,
                                          self.label_map, write=self.chief)
            print(init_from.summary(report)
                  + ("\n  model.backbone_checkpoint not read (init_from covers the backbone)"
                     if self.config.model.backbone_checkpoint else ""), flush=True)
        elif self.config.model.backbone_checkpoint:
            path = self.config.model.backbone_checkpoint
            report = load_backbone_weights(
                self.model.backbone, path,
                allow_partial=self.config.model.backbone_checkpoint_partial)
            print(f"Backbone initialised from {path}: {report.summary()}", flush=True)
        return restored

    def train(self, total_steps=None, stop_after=None):
        """Trains until `total_steps` updates (default `train.total_steps`).

        `stop_after` ends this call after that many updates, with a checkpoint there, so
        that a new run resumes from it (used to split a run).
        Returns the last logs as floats. Raises NonFiniteLossError on a NaN/inf loss,
        NonFiniteWeightsError on NaN/inf weights, DivergedLossError on a diverging loss
        (`train.divergence_factor`): the damaged weights are not saved, and the checkpoints
        no good loss was computed from are moved into `diverged-<step>/`.
        """
        cfg = self.config.train
        total = total_steps or cfg.total_steps
        step_fn = self._train_step_fn()
        start_step = self.step
        rate_base = None  # (time, step) after the first update: tracing excluded from img/s
        logs = {}
        with self.writer.as_default():
            while self.step < total and (stop_after is None or self.step - start_step < stop_after):
                raw = step_fn(next(self.iterator))
                step = self.step
                # 'lr' from the model is a window mean; the exact LR is reported separately.
                logs = {name: float(value) for name, value in raw.items() if name != "lr"}
                self._judge(step, logs)
                lr = float(self._current_lr(step - 1))
                if rate_base is None:
                    rate_base = (time.time(), step)
                if step % cfg.log_every == 0 or step == total:
                    # The logs are means over the steps since the last report.
                    elapsed = time.time() - rate_base[0]
                    done = step - rate_base[1]
                    for name, value in logs.items():
                        tf.summary.scalar(f"losses/{name}" if name.startswith("loss")
                                          else name, value, step=step)
                    tf.summary.scalar("learning_rate", lr, step=step)
                    tf.summary.scalar("images_per_second",
                                      done * self.global_batch / max(elapsed, 1e-9), step=step)
                    print(progress_line(step, total, elapsed, done, self.global_batch, logs, lr),
                          flush=True)
                    self.model.reset_metrics()
                    self._window = (0, 0.0)
                stopping = stop_after is not None and step - start_step >= stop_after
                if step % cfg.checkpoint_every == 0 or step == total or stopping:
                    self._check_finite_weights(step)
                    saved = self.keeper.save() or str(self.model_dir / f"ckpt-{step}")
                    self.record.saved(saved, step, self.divergence.recent)
                    self._unconfirmed = saved
                if cfg.eval_every and (step % cfg.eval_every == 0) and step != total:
                    self.evaluate(step)
        self.writer.flush()
        return logs

    def _check_finite_weights(self, step):
        """Raises NonFiniteWeightsError unless every weight and optimizer slot is finite.

        Run before each save, so a saved checkpoint is always a good one to resume from (a
        finite loss does not prove it: an infinite LR gives a finite loss, then inf weights).
        """
        if self._state_variables is None:
            self._state_variables = [
                v for v in self.model.weights + self.optimizer.variables
                if v.dtype.is_floating]
        flags = _finite_flags(self._state_variables).numpy()
        if not flags.all():
            names = [v.name for v, ok in zip(self._state_variables, flags) if not ok]
            self._stop(NonFiniteWeightsError, step, (
                f"{len(names)} of {len(flags)} weight and optimizer variables are NaN or "
                f"infinite after step {step} (e.g. {', '.join(names[:3])}) although the loss "
                "was finite; this state was not saved and training stopped"))

    def _judge(self, step, logs):
        """Stops the run unless the loss of `step` is finite and not diverging; else confirms
        the checkpoint whose weights it was computed from."""
        bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
        if bad:
            self._stop(NonFiniteLossError, step,
                       f"non-finite loss at step {step} ({bad}); training stopped")
        count, previous = self._window
        loss = divergence.step_loss(logs["loss"], previous, count + 1)
        self._window = (count + 1, logs["loss"])
        why = self.divergence.judge(loss)
        if why:
            self._stop(DivergedLossError, step,
                       f"the loss diverged at step {step}: {why}; training stopped")
        if self._unconfirmed:
            self.record.confirm(self._unconfirmed, step, loss)
            self._unconfirmed = None

    def _stop(self, error_class, step, what):
        """Raises `error_class`, naming the newest good checkpoint, after moving the ones
        written after it into `diverged-<step>/` (the chief moves; every worker stops)."""
        present = run_folder.find_checkpoints(self.model_dir)
        good = next((p for p in present if self.record.is_confirmed(p)), None)
        # Nothing confirmed: what this run resumed from was judged by its first step.
        floor = (checkpoint_step(good) if good else
                 checkpoint_step(self._resumed_from) - 1 if self._resumed_from else -1)
        after = [p for p in present if checkpoint_step(p) > floor]
        moved = ""
        if after:
            folder = self.model_dir / f"diverged-{step}"
            suffix = 1
            while folder.exists():
                suffix += 1
                folder = self.model_dir / f"diverged-{step}-{suffix}"
            if self.chief:
                self.keeper.set_aside(after, folder)
                self.record.drop(after)
            moved = (f"; moved {', '.join(pathlib.Path(p).name for p in after)} (no good loss "
                     f"was computed from them) to {folder}/")
        older = [p for p in present if checkpoint_step(p) <= floor]
        if good:
            then = f"it resumes from {good}"
        elif older:
            then = f"it resumes from {older[0]} (from before this run, judged by its first step)"
        else:
            then = "it starts afresh"
        raise error_class(
            f"{what}. The loss of a step is computed from the weights of the step before it; "
            f"the newest good checkpoint (a finite, non-diverging loss was computed from it) is "
            f"{good or 'none'}{moved}. Lower train.base_lr or check the data, then run the "
            f"same command again: {then}")

    def _current_lr(self, step):
        """LR the schedule gives update index `step` (0-based)."""
        return self.schedule(max(step, 0))

    def evaluate(self, step=None):
        """COCO evaluation of the current weights on the val split, into eval/val/, with
        the pictures of `summaries` (eval.summary_images of them) in eval/val/ and train/."""
        output_dir = self.folder.eval_dir("val")
        step = step or self.step
        self.eval_images = summaries.EvalImages(self.config) if self.chief else None
        metrics = evaluate_lib.evaluate_model(self.config, self.model, output_dir=output_dir,
                                              observer=self.eval_images)
        if self.chief:
            writer = tf.summary.create_file_writer(str(output_dir))
            with writer.as_default():
                for name, value in metrics.items():
                    if isinstance(value, (int, float)) and np.isfinite(value):
                        tf.summary.scalar(f"coco/{name}", value, step=step)
                self.eval_images.write(step)
            writer.flush()
            with self.writer.as_default():
                self.assignment_summaries.write(self.model, step)
            self.writer.flush()
            print("eval: " + json.dumps({k: round(v, 4) for k, v in metrics.items()
                                         if isinstance(v, float)}), flush=True)
        return metrics
