"""Reading a PyTorch checkpoint file safely into NumPy arrays.

A ``.pth`` file is a pickle. ``torch.load(..., weights_only=True)`` unpickles only tensors,
primitive types and containers of them, so a malicious file cannot run code; anything else
in the file is an error. The references save:

* mmdetection: ``{'meta': {...}, 'state_dict': {name: tensor}}`` (plus ``'optimizer'`` in
  training checkpoints; the model zoo files drop it);
* the authors' code (maskrcnn-benchmark's ``Checkpointer``): ``{'model': {name: tensor}}``,
  names prefixed ``module.`` when saved from ``DistributedDataParallel``, plus optionally
  ``'optimizer'``, ``'scheduler'``, ``'iteration'``;
* torchvision's ImageNet files: the bare ``{name: tensor}`` state dict.
"""

from __future__ import annotations

import os

import numpy as np

TORCH_PIN = "torch==2.13.0"


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names the file and the key."""


def _torch():
    try:
        import torch  # optional: only for importing PyTorch checkpoints
    except ModuleNotFoundError:
        raise CheckpointError(
            f"paa_import reads PyTorch checkpoints and needs PyTorch, which paa-tf does not "
            f"install (training, evaluation and serving never need it). Install it with:\n"
            f"    .venv/bin/pip install {TORCH_PIN}\n"
            f"(the CPU build is enough: .venv/bin/pip install {TORCH_PIN} "
            "--index-url https://download.pytorch.org/whl/cpu)") from None
    return torch


def read_state_dict(path) -> tuple[dict, str]:
    """The arrays of the checkpoint ``path`` and the layout of the file.

    Returns:
      (state, kind): ``state`` maps each parameter/buffer name (``module.`` prefix removed)
      to a NumPy array (float32 for floating tensors); ``kind`` is 'mmdet' (a
      ``state_dict`` entry), 'authors' (a ``model`` entry) or 'plain' (a bare state dict).
    Raises:
      CheckpointError naming the file when it is missing, unreadable or not a state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; download it first (README, 'Use a "
                           "released model'); nothing is downloaded at run time")
    torch = _torch()
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickle, zip and torch errors all mean "bad file")
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a PyTorch weights file "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]}). Only tensors and "
            "plain containers are accepted (torch.load weights_only=True): a file holding "
            "other Python objects is refused, since unpickling it could run code") from None
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        kind, state = "mmdet", content["state_dict"]
    elif isinstance(content, dict) and isinstance(content.get("model"), dict):
        kind, state = "authors", content["model"]
    elif isinstance(content, dict) and content and all(
            isinstance(v, torch.Tensor) for v in content.values()):
        kind, state = "plain", content
    else:
        keys = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"checkpoint {path} holds {keys}: expected mmdetection's "
                           "{'state_dict': ...}, the authors' {'model': ...} or a bare state "
                           "dict of tensors")
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: entry '{name}' is a "
                               f"{type(value).__name__}, not a tensor")
        # DistributedDataParallel saves its wrapped model's parameters under 'module.'.
        key = name[len("module."):] if name.startswith("module.") else name
        array = value.detach().cpu()
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
        arrays[key] = np.asarray(array)
    return arrays, kind
