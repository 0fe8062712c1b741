"""Runs a bin/ program with the repository's own Python environment (`.venv`).

`make quickstart` installs the pinned stack into `<repository>/.venv`; the bin/ scripts start
with `#!/usr/bin/env python3`, which is usually the system Python, without TensorFlow or
absl. `use_repository_venv(__file__)`, called by each script before anything else is
imported, re-executes the script with `.venv/bin/python` when that exists and is not the
running interpreter, so `bin/paa_train ...` works without activating anything. Without a
`.venv` a Python that has the packages (an activated environment of the user's own, or
`pip install -e .`) runs on; any other ends with a message saying to run `make quickstart`.

This module imports nothing beyond the standard library: it runs under the system Python.
"""

import importlib.util
import os
import sys

EXIT_BAD_INPUT = 2  # as paa_tf/cli/errors.py: a set-up the user can fix


def use_repository_venv(script):
    """Re-executes `script` under `<repository>/.venv/bin/python` unless already there."""
    repository = os.path.dirname(os.path.dirname(os.path.abspath(script)))
    venv = os.path.join(repository, ".venv")
    python = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return  # already running in it
    if os.access(python, os.X_OK):
        os.execv(python, [python, os.path.abspath(script)] + sys.argv[1:])
    if importlib.util.find_spec("absl") and importlib.util.find_spec("tensorflow"):
        return  # no .venv, but this Python has the packages
    program = os.path.basename(script)
    print(f"{program}: error: {venv} does not exist and {sys.executable} lacks the packages "
          f"paa-tf needs (absl, TensorFlow); run `make quickstart` (or `make .venv/.installed`)"
          f" in {repository} first, or run {program} with a Python that has them",
          file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
