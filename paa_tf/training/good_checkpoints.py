"""Which checkpoints have trained on: the record `good_checkpoints.json` beside them.

A checkpoint saved after step N holds the weights of step N; the loss of step N+1 is the first
one computed from them. Only when that loss is finite and the run has not diverged
(paa_tf/training/divergence.py) is the checkpoint *confirmed*, and only a confirmed checkpoint
is named good when a run stops on a bad loss. Until then it is *unconfirmed*: the newest
checkpoint of a run that was stopped (`--stop_after`, the end of training) or killed right
after a save stays unconfirmed, and the resumed run's first step judges it.

The record, one JSON object by checkpoint name, is rewritten whole and atomically (a
temporary file, fsync, rename) by the chief at each save and each confirmation:

    {"ckpt-250": {"step": 250, "confirmed_by": {"step": 251, "loss": 0.93},
                  "recent_losses": [...]}}

`recent_losses` are the losses of the steps before the save (oldest first), so that a resumed
run's divergence test starts from the median the interrupted one had. Entries of checkpoints
that are no longer in the folder (rotated away, set aside) are dropped. A missing record (a
run folder from before it existed) or a damaged one confirms nothing: its checkpoints are
judged again by the step that follows them.
"""

import json
import os
import pathlib

RECORD_FILENAME = "good_checkpoints.json"


def _name(prefix):
    return pathlib.Path(os.fspath(prefix)).name


class CheckpointRecord:
    """The record of `model_dir` (see the module docstring).

    Args:
      model_dir: the run folder.
      writes: False for a worker that does not write into the run folder (multi-worker
        training: only the chief does); its record is then kept in memory.
    """

    def __init__(self, model_dir, writes=True):
        self.model_dir = pathlib.Path(os.fspath(model_dir))
        self.path = self.model_dir / RECORD_FILENAME
        self.writes = writes
        self.entries = self._load()

    def _load(self):
        try:
            entries = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            print(f"WARNING: {self.path} cannot be read ({type(error).__name__}): no "
                  "checkpoint counts as confirmed; each is judged again by the step after it",
                  flush=True)
            return {}
        return entries if isinstance(entries, dict) else {}

    def _write(self):
        if not self.writes:
            return
        self.entries = {name: entry for name, entry in self.entries.items()
                        if (self.model_dir / f"{name}.index").is_file()}
        temporary = self.path.with_name(f".{RECORD_FILENAME}.tmp")
        with open(temporary, "w") as handle:
            json.dump(self.entries, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def saved(self, prefix, step, recent_losses):
        """A checkpoint was just saved at `step`: unconfirmed, with the losses before it."""
        self.entries[_name(prefix)] = {"step": int(step), "confirmed_by": None,
                                       "recent_losses": [float(v) for v in recent_losses]}
        self._write()

    def confirm(self, prefix, step, loss):
        """The loss of `step`, computed from `prefix`'s weights, was good."""
        entry = self.entries.setdefault(_name(prefix), {"recent_losses": []})
        if entry.get("confirmed_by"):
            return
        entry["confirmed_by"] = {"step": int(step), "loss": float(loss)}
        self._write()

    def is_confirmed(self, prefix):
        return bool(self.entries.get(_name(prefix), {}).get("confirmed_by"))

    def recent_losses(self, prefix):
        """The losses recorded with `prefix` (oldest first), [] when none were."""
        return list(self.entries.get(_name(prefix), {}).get("recent_losses", []))

    def drop(self, prefixes):
        """Forget `prefixes` (moved out of the run folder)."""
        for prefix in prefixes:
            self.entries.pop(_name(prefix), None)
        self._write()
