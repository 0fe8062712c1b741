"""One writer per run folder: the lock file of bin/paa_train (issue 23, item 2).

The two-process case with the real program is in tests/test_train_cli.py
(`test_a_second_trainer_on_the_folder_exits_2_naming_the_first`).
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from paa_tf.cli import errors
from paa_tf.training import run_lock


def dead_pid():
    """The PID of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, **content):
    (folder / run_lock.LOCK_FILENAME).write_text(json.dumps(content))


def test_the_lock_names_its_holder_and_is_released_at_exit_and_on_errors(tmp_path):
    lock = run_lock.RunLock(tmp_path / "run")
    with lock:
        held = json.loads((tmp_path / "run" / "train.lock").read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["started"].endswith("+00:00")
        with pytest.raises(run_lock.RunFolderLockedError,
                           match=rf"another bin/paa_train \(PID {os.getpid()} on host ") as error:
            run_lock.RunLock(tmp_path / "run").acquire()
        assert errors.exit_code_of(error.value) == errors.EXIT_BAD_INPUT
        assert (tmp_path / "run" / "train.lock").is_file()  # the refused one did not remove it
    assert os.listdir(tmp_path / "run") == []  # released, no temporary file left
    with pytest.raises(KeyError):
        with run_lock.RunLock(tmp_path / "run"):
            raise KeyError("a failure inside the run")
    assert os.listdir(tmp_path / "run") == []


def test_a_lock_of_a_process_that_no_longer_exists_is_taken_over(tmp_path, capsys):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid, host=socket.gethostname(), started="2026-01-01T00:00:00+00:00")
    with run_lock.RunLock(tmp_path):
        assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"WARNING: taking over the lock of {tmp_path} left by PID {pid}" in out
    assert "no longer exists" in out
    assert os.listdir(tmp_path) == []


def test_a_lock_held_on_another_host_or_unreadable_is_not_taken(tmp_path):
    write_lock(tmp_path, pid=dead_pid(), host="another-machine", started="2026-01-01")
    with pytest.raises(run_lock.RunFolderLockedError, match="on host another-machine"):
        run_lock.RunLock(tmp_path).acquire()
    (tmp_path / "train.lock").write_text("")  # e.g. a disk that filled up
    with pytest.raises(run_lock.RunFolderLockedError, match="cannot be read"):
        run_lock.RunLock(tmp_path).acquire()
    assert (tmp_path / "train.lock").read_text() == ""  # left for the user to judge


def test_only_one_of_two_takers_of_a_stale_lock_gets_it(tmp_path):
    """The second taker finds the first one's fresh lock, not the stale one, and stops."""
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "started": "2026-01-01"}
    write_lock(tmp_path, **stale)
    first, second = run_lock.RunLock(tmp_path), run_lock.RunLock(tmp_path)
    # Both read the stale lock; the first takes it over and holds a fresh one ...
    assert first.acquire().held["pid"] == os.getpid()
    # ... the second, still believing in the stale lock, must not move the first's away.
    assert second._take_over(stale) is False
    assert json.loads((tmp_path / "train.lock").read_text()) == first.held
    first.release()
    assert os.listdir(tmp_path) == []
