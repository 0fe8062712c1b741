"""Training checkpoints: atomic saves, resume with fallback, chief-only writing.

Checkpoints are found from their own files (`ckpt-<step>.index` beside its data), not from
the `checkpoint` state file, which is only TensorFlow's bookkeeping: a deleted or damaged
state file loses nothing. TensorFlow writes a checkpoint's data first and its index last, so
a process killed mid-save leaves no index (or an index with incomplete data): such a
checkpoint cannot be restored and `restore_latest` falls back to the next older one, as it
does for a checkpoint damaged later (disk, copy). A run never starts afresh over
checkpoints it could not read: it stops and says so. The temporary folder of a save that was
killed (`ckpt-<step>_temp/`, where TensorFlow writes the shards before moving them beside the
index) is removed at the next start, with a note.
"""

import contextlib
import gc
import glob
import os
import pathlib
import shutil

import tensorflow as tf

from paa_tf.modeling.restore import NoReadableCheckpoint, restore_newest
from paa_tf.run_folder import find_checkpoints


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


class UnreadableCheckpointsError(ValueError):
    """`model_dir` holds checkpoints but none of them can be restored."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint holds other variables or shapes than the model being trained
    (its config was changed since): older checkpoints of the run would not fit either."""


def _mismatch(error):
    """Whether a failed restore means "another model" rather than "damaged file"."""
    if isinstance(error, AssertionError):  # assert_existing_objects_matched: other layers
        return True
    return isinstance(error, ValueError) and "incompatible tensor with shape" in str(error)


@contextlib.contextmanager
def _quiet_restore():
    """Holds TensorFlow's logger at ERROR around a restore, until what the restore left is
    garbage-collected: a failed restore's bookkeeping logs one warning per value it did not
    restore when it is deleted (some 200 lines for a config that does not fit), and the
    outcome is reported by the caller instead."""
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel("ERROR")
    try:
        yield
    finally:
        gc.collect()
        tf_logger.setLevel(level)


def _worker_dir(model_dir, strategy):
    """Where this worker saves: the model dir for the chief, a scratch dir for the others.

    Every worker of a MultiWorkerMirroredStrategy must take part in a save (the
    variables are gathered collectively), but only the chief's copy is kept.
    """
    if is_chief(strategy):
        return str(model_dir)
    resolver = strategy.cluster_resolver
    return os.path.join(str(model_dir), f".worker_{resolver.task_type}_{resolver.task_id}")


def _read_step(path):
    return int(tf.train.load_variable(path, "step/.ATTRIBUTES/VARIABLE_VALUE"))


def latest_step(model_dir):
    """Step recorded in the newest readable checkpoint of `model_dir`, 0 if there is none
    (or none is readable: `restore_latest` then says so)."""
    try:
        _, step = restore_newest(find_checkpoints(model_dir), _read_step)
    except NoReadableCheckpoint:
        return 0
    return step or 0


def _state_file_listing(model_dir):
    """Checkpoints the `checkpoint` state file lists, or None when it is missing or damaged."""
    try:
        state = tf.train.get_checkpoint_state(str(model_dir))
    except Exception:  # noqa: BLE001  (ValueError for an empty listing, ParseError, ...)
        return None
    if state is None:
        return None
    return list(state.all_model_checkpoint_paths)


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
        self.max_to_keep = max_to_keep
        self.checkpoint = tf.train.Checkpoint(step=step, **objects)
        self.scratch_dir = _worker_dir(model_dir, strategy)
        self.latest = None  # the checkpoint restored or last saved by this run
        self._unreadable = set()  # checkpoints restore_latest could not read (may be replaced)
        self._manager = None

    @property
    def manager(self):
        """The chief's `tf.train.CheckpointManager` (numbering and rotation of saves)."""
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, str(self.model_dir), max_to_keep=self.max_to_keep,
                step_counter=self.step)
        return self._manager

    def restore_latest(self):
        """Restores the newest readable checkpoint; returns its path or None on a fresh start.

        A checkpoint that cannot be read is skipped with a warning and the next older one is
        tried. Raises UnreadableCheckpointsError when there are checkpoint files but none
        can be read (a fresh start would overwrite them).
        """
        if is_chief(self.strategy):
            self._remove_killed_saves()
        candidates = find_checkpoints(self.model_dir)
        listed = _state_file_listing(self.model_dir)
        if candidates and (listed is None or candidates[0] not in listed):
            print(f"WARNING: the checkpoint state file in {self.model_dir} is missing, damaged "
                  f"or out of date; resuming from the checkpoints found on disk "
                  f"({len(candidates)}, newest {candidates[0]})", flush=True)
        state_file = self.model_dir / "checkpoint"
        if not candidates and listed is None and state_file.exists() and is_chief(self.strategy):
            state_file.unlink()  # lists nothing readable; TensorFlow would refuse to start
        # Created before the restore (a save would create it): restored at once, it is not
        # left pending, to be reported as unrestored when the program ends after a failure.
        self.checkpoint.save_counter  # noqa: B018

        def restore(path):
            with _quiet_restore():
                try:
                    self.checkpoint.restore(path).assert_existing_objects_matched()
                # A damaged file surfaces as an OpError, IndexError, ValueError... depending
                # on where the reader trips; a checkpoint of another model is no fallback.
                except Exception as error:  # noqa: BLE001
                    if not _mismatch(error):
                        raise
                    first_line = str(error).strip().splitlines()[0][:300] if str(error) else ""
                    raise CheckpointMismatchError(
                        f"checkpoint {path} does not fit the model being trained "
                        f"({type(error).__name__}: {first_line})") from None

        try:
            path, _ = restore_newest(candidates, restore, fatal=(CheckpointMismatchError,))
        except NoReadableCheckpoint as error:
            self._unreadable.update(error.problems)
            raise UnreadableCheckpointsError(
                f"{self.model_dir}: {error}; move them away to start afresh") from None
        if path is None:
            return None
        index = candidates.index(path)
        self._unreadable.update(candidates[:index])
        self.latest = path
        if is_chief(self.strategy):
            self._rewrite_state_file(candidates[index:])
        return path

    def _remove_killed_saves(self):
        """Removes the `ckpt-<step>_temp/` folders of saves that never finished.

        TensorFlow writes a checkpoint's shards there and moves them out when the save ends;
        one lock per run folder (paa_tf/training/run_lock.py) means no save is under way.
        """
        for temp in sorted(self.model_dir.glob("ckpt-*_temp")):
            if temp.is_dir():
                shutil.rmtree(temp)
                print(f"NOTE: removed {temp}: the temporary folder of a save that did not "
                      "finish (the run was killed while saving)", flush=True)

    def set_aside(self, prefixes, folder):
        """Moves the checkpoints `prefixes` (their index and data files) into `folder`, a new
        folder inside the run folder, and lists the remaining ones in the state file."""
        folder.mkdir()
        for prefix in prefixes:
            for path in glob.glob(glob.escape(prefix) + ".*"):
                os.replace(path, folder / os.path.basename(path))
        remaining = find_checkpoints(self.model_dir)
        if remaining:
            self._rewrite_state_file(remaining)
        elif (self.model_dir / "checkpoint").exists():
            os.replace(self.model_dir / "checkpoint", folder / "checkpoint")
        self._manager = None
        if self.latest in prefixes:
            self.latest = None

    def _rewrite_state_file(self, readable_first):
        """Lists the restored checkpoint and the older ones (up to max_to_keep) in the state
        file, so the manager numbers and rotates from there (written atomically)."""
        kept = list(reversed(readable_first[:self.max_to_keep]))
        # The manager rotates only checkpoints with a timestamp: their index files' times.
        # TensorFlow marks this writer deprecated in favour of CheckpointManager, which has no
        # way to be told which checkpoints exist; its warning would print on every resume.
        tf_logger = tf.get_logger()
        level = tf_logger.level
        tf_logger.setLevel("ERROR")
        try:
            tf.compat.v1.train.update_checkpoint_state(
                str(self.model_dir), kept[-1], all_model_checkpoint_paths=kept,
                all_model_checkpoint_timestamps=[os.path.getmtime(p + ".index") for p in kept])
        finally:
            tf_logger.setLevel(level)
        self._manager = None  # re-read by the next save

    def save(self):
        """Saves at the current step; every worker must call it. Returns the kept path.

        Refuses to replace an existing readable checkpoint of the same step (that would be
        a second run writing over the first one's results).
        """
        if self.scratch_dir == str(self.model_dir):
            target = str(self.model_dir / f"ckpt-{int(self.step.numpy())}")
            if os.path.exists(target + ".index") and target not in self._unreadable \
                    and target != self.latest:
                raise RuntimeError(
                    f"{target} exists and this run did not restore from it: refusing to "
                    "overwrite it (resume with restore_latest, or use another model_dir)")
            self.latest = self.manager.save(checkpoint_number=self.step)
            return self.latest
        # A non-chief worker writes its copy to scratch (the save is collective) and drops it.
        self.checkpoint.write(os.path.join(self.scratch_dir, "ckpt"))
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        return None
