"""How every program (bin/paa_*) ends on an error: one paragraph and a known exit code.

Exit codes, the same for every program:

  0  done
  1  an unexpected failure (a bug): Python's traceback, please report it
  2  bad input: flags, config, data, files, checkpoints; the message says what to fix
  3  paa_train stopped on a non-finite or diverging loss, or non-finite weights (exceptions
     carrying an `exit_code` attribute choose their own code)

A bad-input error prints `<program>: error: <message>` and no traceback; `--traceback`
shows the traceback as well (for a bug report). Programs get this through
`paa_tf.cli.program.run`.
"""

import sys
import traceback

from absl import app, flags

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3


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

