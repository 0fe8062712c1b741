"""How every program (bin/paa_*) is defined and run: one flag convention for all of them.

A program lists its flags as `Flag` specs (the shared ones below, plus its own) and gets its
entry point from `entry_point(program, flag_specs, main_fn)` (its console script, its bin/
script and `python -m paa_tf.cli <program>` call it). It


* defines the flags on absl's FLAGS once (several programs may share a process, as in the
  tests: a flag already defined with the same meaning is reused, one with another meaning is
  an error) and lists them in `--help`, which exits 0;
* adds `--traceback` and turns `--verbosity` into the switch for TensorFlow's own log lines:
  by default only warnings and errors (absl's `app.run` would show INFO, TF's C++ INFO lines
  are hidden through `TF_CPP_MIN_LOG_LEVEL=1` unless the environment sets it, and on a
  machine without an NVIDIA driver its C++ error lines too, `=3`: `failed call to cuInit` and
  oneDNN's uint8 notice, which a CPU user cannot act on; any `--verbosity` brings them back,
  `--verbosity=-1` the error lines); `--verbosity=0` brings back INFO (`Saving symbolic
  checkpoint`, `Sharding callback duration`, ...);
* refuses positional arguments (unless the program takes them) and missing required flags;
* ends on an error as paa_tf/cli/errors.py says: `<program>: error: <message>`, exit code 2
  for bad input, 3 for a non-finite training, a traceback only for a bug or `--traceback`.

Configuration changes go through one flag, `--override section.key=value` (the same syntax
as the YAML keys; `paa_tf.config.parse_overrides`), in every program that reads a config.
"""

import dataclasses
import os
import sys
from typing import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

from paa_tf.cli import errors

FLAGS = flags.FLAGS

_DEFINE = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer,
           "float": flags.DEFINE_float, "bool": flags.DEFINE_bool, "enum": flags.DEFINE_enum,
           "list": flags.DEFINE_list, "multi_string": flags.DEFINE_multi_string}


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag: `kind` is a key of `_DEFINE`; `options` go to absl's DEFINE_*
    (`enum_values`, `lower_bound`, ...); a `required` flag must be given."""

    kind: str
    name: str
    default: object
    help: str
    required: bool = False
    options: tuple = ()

    def with_help(self, help_text, **changes):
        return dataclasses.replace(self, help=help_text, **changes)

    def as_required(self):
        return dataclasses.replace(self, required=True)


def flag(kind, name, default, help_text, required=False, **options):
    """A `Flag` spec: `flag('integer', 'steps', 800, 'Training steps.', lower_bound=1)`."""
    return Flag(kind, name, default, help_text, required, tuple(sorted(options.items())))


# The flags several programs take, each with one meaning everywhere.
MODEL_DIR = flag("string", "model_dir", None, "Training run folder: config.yaml, "
                 "label_map.json and checkpoints (what bin/paa_train --model_dir writes).")
CHECKPOINT = flag("string", "checkpoint", None, "TensorFlow checkpoint prefix, e.g. "
                  "runs/x/ckpt-2000 (default: the newest readable checkpoint in --model_dir).")
CONFIG = flag("string", "config", None, "Experiment YAML (default: the run's config.yaml in "
              "--model_dir).")
OVERRIDE = flag("multi_string", "override", [], "Config overrides 'section.key=value', comma-"
                "separated or repeated, e.g. --override eval.batch_size=4,eval.score_voting=false"
                ". Values are YAML scalars or [lists]; the keys are those of the config files.")
OUTPUT_DIR = flag("string", "output_dir", None, "Folder to write into.")
_TRACEBACK = flag("bool", "traceback", False, "On an error, print the Python traceback as well "
                  "as the message (for a bug report).")


_DEFINED = {}  # (id of the FlagValues, flag name) -> the Flag spec it was defined from


def define(flag_specs: Sequence[Flag], flag_values=FLAGS):
    """Defines `flag_specs` (and --traceback) unless defined, and lists them in --help.

    A flag already defined from the same kind, default and options (several programs in one
    process, as in the tests) is reused; one defined with another meaning is a ValueError
    naming both, since absl would silently keep the first (a second program's enum values
    or default would be ignored).
    """
    for spec in list(flag_specs) + [_TRACEBACK]:
        key = (id(flag_values), spec.name)
        meaning = (spec.kind, spec.default, spec.options)
        if spec.name in flag_values:
            first = _DEFINED.get(key)
            if first is None:
                raise ValueError(f"flag --{spec.name} is already defined outside paa_tf's "
                                 f"programs ({flag_values[spec.name].help[:60]!r}); give ours "
                                 "another name")
            if (first.kind, first.default, first.options) != meaning:
                raise ValueError(
                    f"flag --{spec.name} is defined twice with different meanings: {first.kind}"
                    f" default {first.default!r} {dict(first.options)} and {spec.kind} default "
                    f"{spec.default!r} {dict(spec.options)}; give one of them another name")
        else:
            _DEFINE[spec.kind](name=spec.name, default=spec.default, help=spec.help,
                               flag_values=flag_values, **dict(spec.options))
            _DEFINED[key] = spec
        # absl's --help lists the key flags of the script named by sys.argv[0] only.
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[spec.name])
    flag_values["verbosity"].help = (
        "Log level of TensorFlow and absl: -1 warnings and errors only (the default, which "
        "also hides TensorFlow's C++ error lines on a machine without an NVIDIA driver, e.g. "
        "'failed call to cuInit'), 0 adds TensorFlow's INFO lines (e.g. 'Saving symbolic "
        "checkpoint'), 1 debug.")
    flag_values.register_key_flag_for_module(sys.argv[0], flag_values["verbosity"])


def _tensorflow_log_level(verbosity):
    """TF_CPP_MIN_LOG_LEVEL for a --verbosity flag (0 all, 1 no INFO, 3 no ERROR lines).

    Given: 1 for -1, 0 for 0 and above. Default: 1 on a machine with an NVIDIA driver, 3 on
    one without: there TensorFlow's C++ side prints E-level lines a CPU user cannot act on
    (CUDA's "failed call to cuInit", oneDNN's "supports DT_UINT8 only on platforms with
    AVX-512"); real failures still reach the program as Python errors.
    """
    if verbosity.present:
        return min(3, max(0, -verbosity.value))
    return 1 if os.path.exists("/proc/driver/nvidia") else 3


def quiet_tensorflow(flag_values=FLAGS):
    """Applies --verbosity (default -1: no INFO lines) to Python logging and, unless the
    environment already says, to TensorFlow's C++ logs (read before its first log line)."""
    verbosity = flag_values["verbosity"]
    if not verbosity.present:  # absl.app.run raised an unset verbosity to INFO
        absl_logging.set_verbosity(absl_logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(_tensorflow_log_level(verbosity)))


_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def _parse_flags(program):
    def parse(argv):
        try:
            return FLAGS(argv)
        except SystemExit as stop:
            # absl's help flags print the usage and exit 1; asking for help is no error.
            if stop.code == 1 and any(arg.split("=")[0] in _HELP for arg in argv[1:]):
                sys.exit(0)
            raise
        except flags.Error as error:
            print(f"{program}: error: {error} (run with --help for the flags)", file=sys.stderr)
            sys.exit(errors.EXIT_BAD_INPUT)
    return parse


def run(program: str, flag_specs: Sequence[Flag], main_fn: Callable, argv=None,
        positional=False):
    """Defines the flags, parses `argv` (default sys.argv) and runs `main_fn(argv)` under the
    error convention of paa_tf/cli/errors.py. `positional`: `main_fn` takes plain arguments
    after the flags (else they are a usage error)."""
    define(flag_specs)
    required = [spec.name for spec in flag_specs if spec.required]

    def checked(args):
        if len(args) > 1 and not positional:
            raise app.UsageError(f"unexpected arguments {args[1:]}; every option is a --flag")
        missing = [f"--{name}" for name in required if FLAGS[name].value in (None, "", [])]
        if missing:
            raise app.UsageError(f"{' and '.join(missing)} "
                                 f"{'is' if len(missing) == 1 else 'are'} required")
        quiet_tensorflow()
        return main_fn(args)

    app.run(errors.guarded(checked, program), argv=sys.argv if argv is None else argv,
            flags_parser=_parse_flags(program))


def entry_point(program: str, flag_specs: Sequence[Flag], main_fn: Callable,
                positional=False):
    """`main(argv=None)` of a program: `run` with its flags (argv default: sys.argv)."""
    def main(argv=None):
        run(program, flag_specs, main_fn, argv, positional)
    main.__doc__ = f"Runs {program}: parses argv (default sys.argv) and calls {main_fn.__name__}."
    return main
