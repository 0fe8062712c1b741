"""A detector with a checkpoint's weights, and the one rule for choosing a checkpoint.

`restore_newest` is the fallback every reader of a run folder follows: training's resume
(`paa_tf.training.checkpoints`), its resume step, and the programs that restore a model
(`restore_run`: evaluation, prediction, pictures, export). The newest checkpoint that can be
read wins; one that cannot is skipped with a warning naming it and the next older one, and
when none can be read the caller is told why the newest failed.
"""

import dataclasses
import os
import sys

import tensorflow as tf

from paa_tf.modeling.detector import build_detector


class NoReadableCheckpoint(ValueError):
    """Checkpoints exist but none of them can be restored (`problems`: path -> message)."""

    def __init__(self, message, problems):
        super().__init__(message)
        self.problems = problems


def restore_newest(candidates, restore_one, what="checkpoint", fatal=()):
    """(path, restore_one(path)) for the newest of `candidates` that `restore_one` accepts.

    Args:
      candidates: checkpoint prefixes, newest first (`RunFolder.checkpoints()`).
      restore_one: callable(path) -> result; any exception means "not this checkpoint".
      what: how the warnings name a checkpoint.
      fatal: exception types raised by `restore_one` that end the search (e.g. a checkpoint
        of another model: no older one will fit either).
    Returns (None, None) when `candidates` is empty; raises `NoReadableCheckpoint` (its
    message names the newest checkpoint and why it failed) when none can be restored.
    """
    problems = {}
    for index, path in enumerate(candidates):
        try:
            return path, restore_one(path)
        except fatal:
            raise
        # A damaged file surfaces as an OpError, IndexError, ValueError... depending on where
        # the reader trips; a checkpoint of another model as an AssertionError.
        except Exception as error:  # noqa: BLE001
            text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            problems[path] = f"{type(error).__name__}: {text}"
            older = candidates[index + 1] if index + 1 < len(candidates) else "none left"
            print(f"WARNING: {what} {path} cannot be restored; falling back to {older} "
                  f"({problems[path][:160]})", file=sys.stderr, flush=True)
    if not candidates:
        return None, None
    newest = candidates[0]
    raise NoReadableCheckpoint(
        f"none of the checkpoints ({', '.join(candidates)}) can be restored; the newest, "
        f"{newest}: {problems[newest]}", problems)


def restore_model(config, checkpoint, image_size):
    """A `PAADetector` for the padded input `image_size` with `checkpoint`'s weights.

    The backbone's pretrained file is not read (the checkpoint holds every weight).
    Raises ValueError when the checkpoint is damaged or does not hold the model's variables.
    """
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, backbone_checkpoint=None))
    model = build_detector(config, image_size=image_size)
    try:
        status = tf.train.Checkpoint(model=model).restore(os.fspath(checkpoint))
        status.expect_partial()  # optimizer slots and the step counter are not needed
        status.assert_existing_objects_matched()
    # A damaged file surfaces as an IndexError, OpError, ValueError... depending on where the
    # reader trips; a checkpoint of another model as an AssertionError.
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"checkpoint {checkpoint} does not match the model built from the "
                         f"config (backbone {config.model.backbone}, {config.model.num_classes} "
                         f"classes) or is damaged: {type(error).__name__}: {str(error)[:300]}. "
                         "Use the config.yaml of the run that wrote the checkpoint and the "
                         "model code it was trained with") from None
    return model


def restore_run(run, config, image_size, checkpoint=None):
    """(model, checkpoint path) of the run folder `run`: `checkpoint`'s weights, or the
    newest readable ones.

    Without `checkpoint` it is like a resumed training run (`restore_newest`). A `checkpoint`
    named by the user is restored or refused, never replaced by another. Raises ValueError
    when there is nothing to restore.
    """
    if checkpoint:
        return restore_model(config, checkpoint, image_size), os.fspath(checkpoint)
    try:
        path, model = restore_newest(
            run.checkpoints(), lambda p: restore_model(config, p, image_size))
    except NoReadableCheckpoint as error:
        raise ValueError(f"{run.path}: {error}") from None
    if path is None:
        raise ValueError(f"no checkpoint in {run.path}; train first or pass --checkpoint "
                         "(a checkpoint prefix, e.g. runs/x/ckpt-2000)")
    return model, path
