"""`python -m paa_tf.cli paa_<program> [flags]`: runs a program by its name, as its bin/ script
and console script do (used by `make quickstart` and `paa_ablate` to start the others)."""

import importlib.util
import sys


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    module = name.removeprefix("paa_")
    module = "import_" if module == "import" else module
    if not name.startswith("paa_") or importlib.util.find_spec(f"paa_tf.cli.{module}") is None:
        print(f"paa_tf.cli: error: {name!r} is not a program; usage: python -m paa_tf.cli "
              "paa_<program> [flags] (the programs are bin/paa_*)", file=sys.stderr)
        sys.exit(2)  # bad input, as paa_tf/cli/errors.py
    importlib.import_module(f"paa_tf.cli.{module}").main(sys.argv[1:])


if __name__ == "__main__":
    main()
