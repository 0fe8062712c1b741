"""How every program (bin/paa_*) ends on an error: one paragraph and a known exit code.

Exit codes, the same for every program:

  0  done
  1  an unexpected failure (a bug): Python's traceback, please report it
  2  bad input: flags, config, data, files, checkpoints; the message says what to fix
  3  paa_train stopped on a non-finite loss or non-finite weights (exceptions carrying an
     `exit_code` attribute choose their own code)

A bad-input error prints `<program>: error: <message>` and no traceback; `--traceback`
shows the traceback as well (for a bug report). Use `run(main_fn, "paa_x")` instead of
`absl.app.run(main_fn)`.
"""

import sys
import traceback

from absl import app, flags

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3


def define_traceback_flag(flag_values=flags.FLAGS):
    if "traceback" not in flag_values:
        flags.DEFINE_bool("traceback", False, "On an error, print the Python traceback as well "
                          "as the message (for a bug report).", flag_values=flag_values)
    flag_values.register_key_flag_for_module(sys.argv[0], flag_values["traceback"])


def exit_code_of(error):
    """The exit code of a bad-input error, or None for anything else (a bug)."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(error, (ValueError, OSError, app.UsageError)):
        return EXIT_BAD_INPUT
    tf = sys.modules.get("tensorflow")  # only when the program has loaded it
    errors = getattr(tf, "errors", None)
    if errors is not None and isinstance(error, errors.OpError):
        return EXIT_BAD_INPUT
    return None


def message_of(error):
    """The error's text without TensorFlow's graph-node lines ('[[{{node ...}}]]')."""
    text = getattr(error, "message", None)
    text = text if isinstance(text, str) else str(error)
    lines = [line for line in text.strip().splitlines() if not line.strip().startswith("[[")]
    text = "\n".join(lines).strip() or type(error).__name__
    if isinstance(error, app.UsageError):
        text += " (run with --help for the flags)"
    return text


def _parse_flags(program):
    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            print(f"{program}: error: {error} (run with --help for the flags)", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
    return parse


def guarded(main_fn, program):
    """`main_fn(argv)` returning its exit code, bad-input errors turned into a paragraph."""
    def wrapped(argv):
        try:
            return main_fn(argv)
        except Exception as error:  # noqa: BLE001  (sorted by exit_code_of; bugs re-raised)
            code = exit_code_of(error)
            if code is None:
                raise
            if flags.FLAGS["traceback"].value:
                traceback.print_exc()
            print(f"{program}: error: {message_of(error)}", file=sys.stderr, flush=True)
            return code
    return wrapped


def run(main_fn, program, argv=None):
    """`absl.app.run` with the error convention of this module (see its docstring)."""
    define_traceback_flag()
    app.run(guarded(main_fn, program), argv=sys.argv if argv is None else argv,
            flags_parser=_parse_flags(program))
