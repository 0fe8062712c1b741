"""The wheel needs no repository (issue 21): built, installed non-editable into a fresh venv
and run from a folder outside the checkout, the programs find every file they read (the
presets ship inside the package, `paa_tf/configs/`, package data of setup.cfg).

The wheel is built from a copy of the packaging files (setup.cfg, pyproject.toml, README.md,
paa_tf/), so the checkout gets no build/ or egg-info folder. The fresh venv has no pip and no
packages of its own: the shared environment's pip installs the wheel into it (`--python`,
`--no-deps`), and a .pth file appends the shared site-packages (TensorFlow and the rest) to its
path. A .pth line only appends a folder: the .pth files inside it, among them the shared
environment's editable install of paa_tf, are not run, so `paa_tf` can only come from the
wheel. PYTHONPATH is removed and every command runs in a temporary folder.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

from tests.test_export import REPO

pytestmark = pytest.mark.slow  # a wheel build and four TensorFlow processes: ~2 min


def _run(command, cwd, env, codes=(0,)):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode in codes, \
        f"{command}: rc {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's bin folder, the environment to run it with, a working folder)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "paa_tf", source / "paa_tf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(wheels), str(source)], source, env)
    wheel, = wheels.glob("paa_tf-*.whl")
    prefix = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(prefix)
    python = prefix / "bin" / "python"
    site = pathlib.Path(_run([str(python), "-c", "import sysconfig; print(sysconfig."
                              "get_paths()['purelib'])"], prefix, env).strip())
    (site / "shared_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], prefix, env)
    return prefix / "bin", env, tmp_path_factory.mktemp("work")


def test_the_package_comes_from_the_wheel_with_its_presets(installed):
    bin_dir, env, work = installed
    out = _run([str(bin_dir / "python"), "-c",
                "import paa_tf, paa_tf.config as c; print(paa_tf.__file__); "
                "print(' '.join(c.preset_names()))"], work, env)
    location, presets = out.strip().splitlines()
    assert pathlib.Path(location).is_relative_to(bin_dir.parent), location
    assert not pathlib.Path(location).is_relative_to(REPO)
    assert presets.split() == sorted(p.stem for p in (REPO / "paa_tf" / "configs").glob("*.yaml"))


def test_import_help_train_with_a_preset_by_name_and_export(installed):
    bin_dir, env, work = installed
    # --help exits 0 (paa_tf/cli/program.py); the flags listed show the program's own code ran.
    usage = _run([str(bin_dir / "paa_import"), "--help"], work, env)
    assert "--torch_checkpoint" in usage and "--source" in usage
    _run([str(bin_dir / "paa_make_shapes"), "--output_dir", "data/shapes", "--num_train", "4",
          "--num_val", "2", "--image_size", "64"], work, env)
    _run([str(bin_dir / "paa_train"), "--config", "quickstart", "--model_dir", "runs/q",
          "--stop_after", "2", "--override", "train.batch_size=2"], work, env)
    assert (work / "runs" / "q" / "checkpoint").is_file()
    _run([str(bin_dir / "paa_export"), "--model_dir", "runs/q", "--export_dir", "export"],
         work, env)
    assert (work / "export" / "1" / "saved_model.pb").is_file()
    assert (work / "export" / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
