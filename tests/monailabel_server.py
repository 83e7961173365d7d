"""A real MONAI Label 0.8.5 server for the tests: the `monaibundle` sample app run by `.venv-label`'s Python.

The server is started exactly as docs/monailabel.md tells users to (offline: local bundles in the app's `model/`
folder, `zoo_source github` so nothing is fetched at start-up, SAM2 off), on 127.0.0.1 and a free port, in its own
process group so that every process it spawns (training runs in a child process) is ended with it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
LABEL_VENV = REPO_ROOT / ".venv-label"
LABEL_PYTHON = LABEL_VENV / "bin" / "python"
# MONAI Label logs this (and then serves an untrained network, as it loads with strict=False) when model.pt's keys
# differ from network_def's: tests fail on it.
CHECKPOINT_MISMATCH = "Checkpoint keys don't match"


def make_app(out_dir: Path) -> Path:
    """Copy MONAI Label's `monaibundle` sample app (shipped in the wheel) into OUT_DIR; return the app folder."""
    cmd = [str(LABEL_PYTHON), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle"]
    subprocess.run(
        [*cmd, "--output", str(out_dir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Path(out_dir) / "monaibundle"


def set_config_values(config_file: Path, values: dict[str, Any]) -> None:
    """Set `#`-separated ids of a JSON bundle config (as `monai.bundle run --id value` would) and rewrite the file."""
    config = json.loads(config_file.read_text())
    for key, value in values.items():
        *parents, last = key.split("#")
        node = config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    config_file.write_text(json.dumps(config, indent=4))


def install_bundle(app_dir: Path, bundle: str | Path, ckpt: Path, config_values: dict[str, dict[str, Any]]) -> Path:
    """Pack BUNDLE (a name under bundles/ or a bundle folder) with the weights CKPT (`python -m shared pack`) into the
    app's `model/` folder; return the installed folder.

    ``config_values`` maps a config file name (``"inference.json"``) to the ids to set in the packed copy (e.g. the
    tiny network the test trained); the repository's bundle is never changed.
    """
    from shared.packaging import pack_bundle

    model_dir = app_dir / "model"
    model_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pack_bundle(str(bundle), out=tmp, ckpt=ckpt, torchscript=False)
        name = Path(bundle).name
        target = model_dir / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(Path(tmp) / name, target)
    for name, values in config_values.items():
        set_config_values(target / "configs" / name, values)
    return target


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MonaiLabelServer:
    """``with MonaiLabelServer(app, studies, ["msan_kits"], log) as server:`` a started server, always ended at exit."""

    def __init__(
        self,
        app_dir: Path,
        studies_dir: Path,
        models: Sequence[str],
        log_file: Path,
        startup_timeout: float = 240.0,
    ):
        self.app_dir, self.studies_dir, self.models = Path(app_dir), Path(studies_dir), list(models)
        self.log_file = Path(log_file)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The documented offline start command (docs/monailabel.md)."""
        return [
            str(LABEL_PYTHON), "-m", "monailabel.main", "start_server",
            "--app", str(self.app_dir), "--studies", str(self.studies_dir),
            "--conf", "models", ",".join(self.models),
            "--conf", "zoo_source", "github",
            "--conf", "sam2", "false",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip

    def __enter__(self) -> "MonaiLabelServer":
        env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(self.app_dir / "sessions"), "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"MONAI Label server exited with {self._process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/info/")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1.0)
        raise TimeoutError(f"MONAI Label server not up after {self.startup_timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """End the server's process group (the server and any training process it started)."""
        if self._process is None or self._process.poll() is not None:
            return
        pgid = os.getpgid(self._process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self._process.wait(timeout=15)

    def log(self) -> str:
        """Everything the server (and its training processes) printed so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def checkpoint_mismatches(self) -> list[str]:
        """The log lines where MONAI Label reports checkpoint keys that do not match the network."""
        return [line for line in self.log().splitlines() if CHECKPOINT_MISMATCH in line]

    def request(self, method: str, path: str, query: dict | None = None, body: Any = None, timeout: float = 300):
        """Send a request; return the response body and headers, or raise RuntimeError with the answer and log tail."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {url}: HTTP {err.code} {err.read()[:2000]!r}\n{self.log()[-4000:]}") from err

    def answer(self, method: str, path: str, query: dict | None = None, timeout: float = 300) -> tuple[int, bytes]:
        """Send a request without a body; return the HTTP status and the response body, error answers included."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def rss_mib(self) -> float:
        """Resident memory of the server's process group (the server and every process it started), in MiB."""
        pgid = os.getpgid(self._process.pid)
        pages = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # fields after the command name (which may hold spaces): state ppid pgrp ...
                if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    pages += int((stat.parent / "statm").read_text().split()[1])
            except (OSError, IndexError, ValueError):  # the process ended while being read
                continue
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def get(self, path: str, query: dict | None = None) -> Any:
        return json.loads(self.request("GET", path, query, timeout=30)[0])

    def infer(self, model: str, image_id: str, out_dir: Path) -> Path:
        """`POST /infer/<model>?image=<id>&output=image`: the label volume, saved in OUT_DIR as `<id>` with the
        extension the server gives it (the study's own: `.nii.gz` or `.nii`)."""
        body, headers = self.request("POST", f"/infer/{model}", {"image": image_id, "output": "image"})
        name = headers.get_filename() or ""
        extension = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
        out_file = Path(out_dir) / f"{image_id}{extension}"
        out_file.write_bytes(body)
        return out_file

    def train(self, model: str, params: dict, timeout: float = 300) -> dict:
        """`POST /train/<model>` as the viewer does (a background training process); wait for it; return its task.

        The task's ``status`` is ``DONE`` when the training process exited with 0, ``ERROR`` otherwise.
        """
        task = json.loads(self.request("POST", f"/train/{model}", body=params)[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.get("/train/")
            if last.get("id") == task.get("id") and last.get("status") not in ("SUBMITTED", "RUNNING"):
                return last
            time.sleep(2.0)
        self.request("DELETE", "/train/")
        raise TimeoutError(f"training {model} not finished after {timeout} s:\n{self.log()[-4000:]}")
