"""One convention for every program (paa_tf/cli/program.py): installed as console scripts,
runnable from bin/ with the system Python, one `--override`, the same usage errors."""

import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = sorted(p.name for p in (REPO / "bin").iterdir() if p.name.startswith("paa_"))
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python_lacks_absl():
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import absl"], capture_output=True
                          ).returncode != 0


def test_every_bin_program_is_a_console_script_of_its_cli_module():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    scripts = dict(line.split(" = ") for line in
                   setup["options.entry_points"]["console_scripts"].strip().splitlines())
    assert sorted(scripts) == PROGRAMS
    for name, target in scripts.items():
        module = target.split(":")[0]
        assert f"from {module} import main" in (REPO / "bin" / name).read_text(), name


@pytest.mark.skipif(not _system_python_lacks_absl(), reason="needs a system Python without "
                    "absl, to show that bin/ switches to the repository's .venv")
@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(),
                    reason="needs the repository's .venv (make quickstart)")
def test_bin_programs_run_under_the_system_python_through_the_venv(tmp_path):
    """`/usr/bin/python3 bin/paa_make_shapes` (no absl there) re-executes itself with
    .venv/bin/python and writes the dataset."""
    result = subprocess.run([SYSTEM_PYTHON, str(REPO / "bin" / "paa_make_shapes"),
                             f"--output_dir={tmp_path}", "--num_train=1", "--num_val=1",
                             "--image_size=64"], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Generated shapes dataset" in result.stdout
    assert (tmp_path / "annotations" / "instances_train.json").is_file()


@pytest.mark.skipif(not _system_python_lacks_absl(), reason="needs a system Python without "
                    "absl, the case of a fresh clone before `make quickstart`")
def test_without_a_venv_bin_programs_say_to_run_make_quickstart(tmp_path):
    """A clone before `make quickstart`: no .venv, a Python without the packages."""
    (tmp_path / "bin").mkdir()
    shutil.copy(REPO / "bin" / "paa_train", tmp_path / "bin" / "paa_train")
    (tmp_path / "paa_tf" / "cli").mkdir(parents=True)
    for name in ("__init__.py", "cli/__init__.py", "cli/venv.py"):
        shutil.copy(REPO / "paa_tf" / name, tmp_path / "paa_tf" / name)
    result = subprocess.run([SYSTEM_PYTHON, str(tmp_path / "bin" / "paa_train"), "--help"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "paa_train: error:" in result.stderr and "run `make quickstart`" in result.stderr
    assert "Traceback" not in result.stderr


def _run(name, *args):
    return subprocess.run([sys.executable, str(REPO / "bin" / name), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


# Programs that read an experiment config take its changes through --override only.
CONFIG_READERS = ("paa_ablate", "paa_eval", "paa_export", "paa_import", "paa_predict",
                  "paa_train")


@pytest.mark.parametrize("name", PROGRAMS)
def test_help_lists_the_common_flags_and_one_override(name):
    result = _run(name, "--help")
    assert result.returncode == 0, (name, result.stderr[-1000:])  # help asked is no error
    flags_listed = result.stdout + result.stderr
    assert "--[no]traceback:" in flags_listed and "--verbosity:" in flags_listed, name
    assert ("--override:" in flags_listed) == (name in CONFIG_READERS), name
    assert "params_override" not in flags_listed


@pytest.mark.parametrize("name, args, words", [
    ("paa_export", ["--model_dir=x"], "paa_export: error: --export_dir is required"),
    ("paa_predict", ["--images=x"], "paa_predict: error: --model_dir and --output_dir are "
                                    "required"),
    ("paa_eval", ["--model_dir=x", "stray"], "paa_eval: error: unexpected arguments "
                                             "['stray']"),
    ("paa_export", ["--params_override=eval.batch_size=2"], "paa_export: error: Unknown "
                                                             "command line flag"),
])
def test_usage_errors_read_the_same_in_every_program(name, args, words):
    result = _run(name, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert words in result.stderr and "(run with --help for the flags)" in result.stderr
    assert "Traceback" not in result.stderr


def _program_flags():
    """{program module: its FLAG_SPECS} of every program (paa_tf/cli/*.py with a main)."""
    import importlib

    found = {}
    for path in sorted((REPO / "paa_tf" / "cli").glob("*.py")):
        module = importlib.import_module(f"paa_tf.cli.{path.stem}")
        if hasattr(module, "FLAG_SPECS"):
            found[path.stem] = module.FLAG_SPECS
    return found


def test_one_flag_vocabulary_across_the_programs():
    specs = _program_flags()
    assert len(specs) == len(PROGRAMS)
    meanings = {}
    for program_name, flag_specs in specs.items():
        for spec in flag_specs:
            meaning = repr((spec.kind, spec.default, spec.options))
            meanings.setdefault(spec.name, set()).add(meaning)
            if spec.name == "checkpoint":  # never the importer's .pth file
                assert "TensorFlow checkpoint prefix" in spec.help, (program_name, spec.help)
    differing = {name: m for name, m in meanings.items() if len(m) > 1}
    assert not differing, f"one flag name, several meanings: {differing}"
    # Folders are --output_dir and --image_dir everywhere; --output is only paa_visualize's
    # picture file.
    assert "data" not in meanings and "output" in meanings
    outputs = [spec for flag_specs in specs.values() for spec in flag_specs
               if spec.name == "output"]
    assert len(outputs) == 1 and "file" in outputs[0].help, outputs


def test_a_flag_defined_twice_with_another_meaning_is_an_error():
    from absl import flags

    from paa_tf.cli import program

    values = flags.FlagValues()
    flags.DEFINE_integer("verbosity", -1, "as absl defines it", flag_values=values)
    first = program.flag("enum", "mode", "a", "A mode.", enum_values=["a", "b"])
    program.define([first], values)
    program.define([first.with_help("The same flag, other words.")], values)  # reused
    assert values["mode"].value == "a"
    with pytest.raises(ValueError, match="--mode is defined twice with different meanings"):
        program.define([program.flag("enum", "mode", "a", "A mode.", enum_values=["a", "c"])],
                       values)
    flags.DEFINE_string("foreign", None, "someone else's", flag_values=values)
    with pytest.raises(ValueError, match="--foreign is already defined outside"):
        program.define([program.flag("string", "foreign", None, "ours")], values)
