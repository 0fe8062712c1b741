"""One writer per run folder: the lock file `bin/paa_train` holds in `--model_dir`.

The lock, `train.lock`, is a small JSON file: the holder's PID, host name and start time. It
is created whole or not at all: its text is written to a file of this process's own, made
with O_CREAT | O_EXCL, and then hard-linked under the lock's name, which fails when the lock
exists, so of two programs starting together exactly one gets it and nobody ever reads a
half-written lock. A second `paa_train` on the folder stops (exit 2) naming the holder.

A lock whose PID no longer exists on this host (the holder was killed with SIGKILL or died
with its machine) is taken over with a warning. It is first renamed to a name of the taker's
own, so that of two programs taking over the same stale lock only one succeeds. A lock held
on another host cannot be checked from here: it is reported, and removing it is the user's
call. The lock is released when `paa_train` ends, by an error as well (exit 2 or 3).
"""

import contextlib
import datetime
import json
import os
import pathlib
import socket

LOCK_FILENAME = "train.lock"


class RunFolderLockedError(ValueError):
    """Another training program holds the run folder's lock (bad input: exit code 2)."""


def _pid_exists(pid):
    try:
        os.kill(pid, 0)  # signal 0: no signal sent, only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _describe(holder):
    return (f"PID {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}")


class RunLock:
    """The lock of the run folder `path` (see the module docstring).

    Use `with RunLock(path):` around everything that writes into the folder.
    """

    def __init__(self, path):
        self.folder = pathlib.Path(os.fspath(path))
        self.path = self.folder / LOCK_FILENAME
        self.held = None  # the lock's content while this process holds it

    def _read(self, path=None):
        """The lock's content, {} for an unreadable one, None when there is no lock."""
        try:
            text = (path or self.path).read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _create(self, content):
        """True if this call created the lock with `content`, False if it exists."""
        own = self.folder / f".{LOCK_FILENAME}.{os.getpid()}"
        descriptor = os.open(own, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(json.dumps(content) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.link(own, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            own.unlink(missing_ok=True)

    def _take_over(self, stale):
        """Moves the stale lock `stale` out of the way; False if another program did first."""
        moved = self.folder / f".{LOCK_FILENAME}.stale.{os.getpid()}"
        try:
            os.replace(self.path, moved)
        except FileNotFoundError:
            return False
        if self._read(moved) == stale:
            moved.unlink()
            return True
        # Another program took the stale lock over between our read and the rename: this is
        # its fresh lock; put it back (unless yet another program holds one by now).
        with contextlib.suppress(FileExistsError):
            os.link(moved, self.path)
        moved.unlink()
        return False

    def acquire(self):
        """Takes the lock; RunFolderLockedError naming the holder when another one has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        content = {"pid": os.getpid(), "host": host,
                   "started": datetime.datetime.now(datetime.UTC).isoformat(
                       timespec="seconds")}
        for _ in range(3):  # a few rounds: another program may be taking it at the same time
            if self._create(content):
                self.held = content
                return self
            holder = self._read()
            if holder is None:
                continue  # released meanwhile
            if not holder:
                raise RunFolderLockedError(
                    f"{self.path} exists but cannot be read: another bin/paa_train may be "
                    f"writing into {self.folder}. If none is running there, delete the file "
                    "and start again")
            pid = holder.get("pid")
            if holder.get("host") == host and isinstance(pid, int) and not _pid_exists(pid):
                if self._take_over(holder):
                    print(f"WARNING: taking over the lock of {self.folder} left by "
                          f"{_describe(holder)}: that process no longer exists (killed?)",
                          flush=True)
                continue
            raise RunFolderLockedError(
                f"{self.folder} is being trained by another bin/paa_train ({_describe(holder)}; "
                f"lock file {self.path}): one run folder takes one writer. Wait for it to end, "
                "stop it, or use another --model_dir (if no bin/paa_train runs there any more, "
                "delete the lock file)")
        raise RunFolderLockedError(f"could not take the lock {self.path}: other programs keep "
                                   "taking it; start one bin/paa_train per --model_dir")

    def release(self):
        """Removes the lock if this process still holds it."""
        if self.held is not None and self._read() == self.held:
            self.path.unlink(missing_ok=True)
        self.held = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
        return False
