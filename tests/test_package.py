"""The installed package: imports cleanly, never pulls in Keras 3, ships its executables."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_no_module_imports_keras3():
    # A fresh interpreter: import every paa_tf module, then check that Keras 3 never loaded
    # and that tf.keras is tf_keras.
    code = (
        "import importlib, pkgutil, sys\n"
        "import paa_tf\n"
        "for m in pkgutil.walk_packages(paa_tf.__path__, 'paa_tf.'):\n"
        "    importlib.import_module(m.name)\n"
        "import tensorflow as tf, tf_keras\n"
        "loaded = sorted(k for k in sys.modules if k.split('.')[0] == 'keras')\n"
        "assert not loaded, loaded\n"
        "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__\n"
        "print('clean')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "clean" in out.stdout


def test_source_never_imports_keras3():
    offenders = []
    for path in list(REPO.glob("paa_tf/**/*.py")) + list(REPO.glob("bin/*")):
        for line in path.read_text(errors="replace").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import keras", "from keras")):
                offenders.append(f"{path.relative_to(REPO)}: {stripped}")
    assert not offenders, offenders
