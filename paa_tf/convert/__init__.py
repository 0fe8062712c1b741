"""Conversion of released PyTorch PAA checkpoints into paa-tf models (``bin/paa_import``).

* ``torch_file``: reads a ``.pth`` safely (``torch.load(weights_only=True)``) into NumPy;
* ``layouts``: where each paa-tf variable lives in mmdetection's, the authors' and
  torchvision's checkpoints, and how its array is transformed;
* ``strict_load``: assigns a checkpoint to a built model, refusing unknown, missing or
  unused keys and shape mismatches (each error names the key);
* ``importer``: writes a run folder (``paa_tf.run_folder.RunFolder``: config.yaml,
  label_map.json, a checkpoint) that ``paa_eval``, ``paa_predict``, ``paa_visualize`` and
  ``paa_export`` use like a trained run.

PyTorch is needed only here, to read the file; nothing else in paa-tf imports it.
"""
