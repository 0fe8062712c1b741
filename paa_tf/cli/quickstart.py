"""The README's first command: generate data, train, evaluate and export the small model.

Each step runs the same command-line program a user would run (bin/paa_*), in order, and
the first that fails stops the rest with its exit code.
"""

import subprocess
import sys
import time

CONFIG = "quickstart"  # the shipped preset, by name: runs outside the checkout too
MODEL_DIR = "runs/quickstart"

STEPS = [
    ("generate the shapes dataset", "paa_make_shapes",
     ["--output_dir", "data/shapes"]),
    ("train the quickstart model", "paa_train",
     ["--config", CONFIG, "--model_dir", MODEL_DIR]),
    ("evaluate it with pycocotools", "paa_eval",
     ["--model_dir", MODEL_DIR]),
    ("export it as a SavedModel", "paa_export",
     ["--model_dir", MODEL_DIR, "--export_dir", f"{MODEL_DIR}/export", "--overwrite"]),
]


def main():
    for index, (title, name, args) in enumerate(STEPS, start=1):
        command = [sys.executable, "-m", "paa_tf.cli", name] + args
        print(f"[quickstart] step {index}: {title}: bin/{' '.join(command[3:])}", flush=True)
        start = time.time()
        result = subprocess.run(command)
        if result.returncode != 0:
            print(f"[quickstart] step {index} ({title}) failed with exit code "
                  f"{result.returncode}", flush=True)
            return result.returncode
        print(f"[quickstart] step {index} done in {time.time() - start:.0f} s", flush=True)
    print("[quickstart] all steps done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
