"""TensorBoard (the version pinned with TensorFlow) served on a local port, for tests and
for the README's screenshot (`python -m tests.helpers.tensorboard_server RUN_FOLDER OUT.png`)."""

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from tests.helpers.ports import free_ports


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@contextlib.contextmanager
def serve(logdir, ready=lambda tags: bool(tags), timeout=120):
    """Start TensorBoard on `logdir` at a free 127.0.0.1 port; yield its base URL once
    `ready(image tags)` holds (the JSON of /data/plugin/images/tags); stop it on exit.

    Raises TimeoutError (with TensorBoard's output) when it is not ready in `timeout` s.
    """
    port = free_ports(1)[0]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if ready(json.loads(get(f"{base}/data/plugin/images/tags"))):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass  # not listening yet, or still loading the event files
            if process.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise TimeoutError(f"TensorBoard on {logdir} not ready after {timeout} s "
                                   f"(exit code {process.poll()}):\n"
                                   f"{log.read().decode(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def screenshot(url, output, size=(1400, 1000), budget_ms=15000):
    """A PNG of `url` taken by headless Chromium (Debian's `chromium` package)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FileNotFoundError("no chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             f"--virtual-time-budget={budget_ms}", f"--screenshot={os.path.abspath(output)}",
             url], check=True, capture_output=True, timeout=180)
    return output


if __name__ == "__main__":
    # The Images tab of a run folder, as a 256-colour PNG (the README's, < 300 KB).
    from PIL import Image  # only for the screenshot

    run_folder, picture = pathlib.Path(sys.argv[1]), sys.argv[2]
    with serve(run_folder) as base:
        screenshot(f"{base}/#images", picture)
    Image.open(picture).convert("RGB").quantize(256).save(picture, optimize=True)
    print(f"{picture}: {os.path.getsize(picture)} bytes")
