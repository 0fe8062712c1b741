"""The README's first command: generate data, train, evaluate and export the small model.

Each step runs the same command-line program a user would run, in order; a step that
fails stops the run with its exit code.
"""

import subprocess
import sys
import time

CONFIG = "configs/quickstart.yaml"
MODEL_DIR = "runs/quickstart"

STEPS = [
    ("generate the shapes dataset", "paa_tf.cli.make_shapes",
     ["--output_dir", "data/shapes"]),
    ("train the quickstart model", "paa_tf.cli.train",
     ["--config", CONFIG, "--model_dir", MODEL_DIR]),
    ("evaluate it with pycocotools", "paa_tf.cli.eval",
     ["--model_dir", MODEL_DIR]),
    ("export it as a SavedModel", "paa_tf.cli.export",
     ["--model_dir", MODEL_DIR, "--export_dir", f"{MODEL_DIR}/export", "--overwrite"]),
]


def main():
    for index, (title, module, args) in enumerate(STEPS, start=1):
        command = [sys.executable, "-m", module] + args
        print(f"[quickstart] step {index}: {title}: {' '.join(command[2:])}", flush=True)
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
