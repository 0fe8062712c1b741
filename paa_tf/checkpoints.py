"""Training checkpoints: atomic saves, resume with fallback, chief-only writing.

TensorFlow writes a checkpoint's data and index files first and only then
records it in the `checkpoint` state file (an atomic rename), so a process
killed mid-save leaves an unlisted, ignored checkpoint: the listed ones are
always complete. What can still happen is a listed checkpoint damaged later
(disk, copy); `restore_latest` then falls back to the previous one.
"""

import os
import pathlib
import shutil

import tensorflow as tf
from absl import logging


def is_chief(strategy):
    """True for the worker that writes checkpoints and summaries (always true off multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    # Without an explicit chief, worker 0 is the chief.
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def _worker_dir(model_dir, strategy):
    """Where this worker saves: the model dir for the chief, a scratch dir for the others.

    Every worker of a MultiWorkerMirroredStrategy must take part in a save (the
    variables are gathered collectively), but only the chief's copy is kept.
    """
    if is_chief(strategy):
        return str(model_dir)
    resolver = strategy.cluster_resolver
    return os.path.join(str(model_dir), f".worker_{resolver.task_type}_{resolver.task_id}")


def latest_step(model_dir):
    """Step recorded in the newest listed checkpoint of `model_dir`, 0 if none/unreadable."""
    path = tf.train.latest_checkpoint(str(model_dir))
    if path is None:
        return 0
    try:
        return int(tf.train.load_variable(path, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    except Exception:  # noqa: BLE001  (a damaged file is dealt with by restore_latest)
        return 0


class CheckpointKeeper:
    """Saves and restores `tf.train.Checkpoint(**objects)` under `model_dir`.

    Args:
      model_dir: folder of the run.
      strategy: the `tf.distribute` strategy (decides who keeps what it saves).
      step: the int64 variable counting optimizer updates (checkpoint names use it).
      max_to_keep: number of checkpoints kept.
      **objects: trackables to save (model, optimizer, data iterator, ...).
    """

    def __init__(self, model_dir, strategy, step, max_to_keep=3, **objects):
        self.model_dir = pathlib.Path(model_dir)
        self.strategy = strategy
        self.step = step
        self.checkpoint = tf.train.Checkpoint(step=step, **objects)
        self.scratch_dir = _worker_dir(model_dir, strategy)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.model_dir), max_to_keep=max_to_keep, step_counter=step)

    def restore_latest(self):
        """Restores the newest readable checkpoint; returns its path or None on a fresh start.

        A checkpoint that cannot be read is skipped with a warning and the next
        older one is tried.
        """
        candidates = list(reversed(self.manager.checkpoints))
        for index, path in enumerate(candidates):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            # A damaged file surfaces as an OpError, IndexError, ValueError... depending on
            # where the reader trips; any failure here means "not this checkpoint".
            except Exception as error:  # noqa: BLE001
                older = candidates[index + 1] if index + 1 < len(candidates) else "none left"
                logging.warning("checkpoint %s cannot be restored (%s: %s); falling back to "
                                "the previous one (%s)", path, type(error).__name__,
                                str(error).splitlines()[0][:200], older)
                print(f"WARNING: checkpoint {path} is unreadable ({type(error).__name__}); "
                      f"falling back to {older}", flush=True)
                continue
            return path
        if candidates:
            raise RuntimeError(
                f"none of the checkpoints in {self.model_dir} can be restored "
                f"({', '.join(candidates)}); move them away to start afresh")
        return None

    def save(self):
        """Saves at the current step; every worker must call it. Returns the kept path."""
        if self.scratch_dir == str(self.model_dir):
            return self.manager.save(checkpoint_number=self.step)
        # A non-chief worker writes its copy to scratch (the save is collective) and drops it.
        self.checkpoint.write(os.path.join(self.scratch_dir, "ckpt"))
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        return None

    @property
    def latest(self):
        return self.manager.latest_checkpoint
