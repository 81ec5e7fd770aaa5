"""A real federation on one machine: a SuperLink and N SuperNodes as separate processes on
127.0.0.1, the app submitted with ``flwr run`` (Flower's deployment runtime, flwr 1.x).

The recipe by hand (book/10_flower.ipynb; one terminal per line, ``$P`` a free port):

    flower-superlink --insecure --port $P --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:$P --port $((P+1)) --node-config "partition-id=0 num-partitions=2"
    flower-supernode --insecure --superlink 127.0.0.1:$P --port $((P+2)) --node-config "partition-id=1 num-partitions=2"
    flwr run APP_DIR local      # APP_DIR from write_app; "local" a connection in $FLWR_HOME/config.toml

``--insecure`` is for a test on one machine: nothing is encrypted and any SuperNode may join.
A real deployment gives the SuperLink a certificate (``--ssl-ca-certfile --ssl-certfile
--ssl-keyfile``; SuperNodes and ``flwr`` then trust it with ``--root-certificates`` and
``root-certificates`` in the connection) and admits only known SuperNodes
(``--enable-supernode-auth`` on the SuperLink, ``flwr supernode register KEY.pub`` for each node,
``--auth-supernode-private-key`` on the node).

``LocalFederation`` starts the processes, submits a run and stops every process it started (by
PID: each one and what it spawned), within a time bound; the tests and the chapter use it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .node import RunSpec

CONNECTION = "fedmm-local"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_app(directory: Path, spec: RunSpec, result_path: Path, wait_s: float = 300.0) -> Path:
    """The Flower app project ``flwr run`` submits: a pyproject.toml naming the package's
    ServerApp and ClientApp (apps.py) and the run's config (the RunSpec as JSON, where the
    ServerApp writes its result). fedmm_lite and flwr must be importable where the app runs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedmm-flower"
version = "0.1.0"
description = "fedmm_lite's clients and server as a Flower app"
license = "MIT"
dependencies = []   # fedmm_lite[flower] is installed where the app runs

[tool.flwr.app]
publisher = "fedmm"

[tool.flwr.app.components]
serverapp = "fedmm_lite.flower.apps:server_app"
clientapp = "fedmm_lite.flower.apps:client_app"

[tool.flwr.app.config]
spec = '{spec.to_json()}'
result-path = '{Path(result_path).resolve()}'
wait-s = {float(wait_s)}
"""
    (directory / "pyproject.toml").write_text(text)
    return directory


def _descendants(pid: int) -> list:
    """Every process below ``pid`` (children first found by walking /proc's parent ids)."""
    children: dict = {}
    if not Path("/proc").is_dir():         # no /proc (macOS): the process groups are signalled
        return []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:                     # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class LocalFederation:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1 in insecure mode (module docstring).

    ``with LocalFederation(2, workdir) as fed: result = fed.run(spec)``; every process started is
    stopped on exit, and ``pids`` lists them."""

    def __init__(self, nodes: int, workdir: Path, port: int | None = None):
        self.nodes, self.workdir = int(nodes), Path(workdir)
        self.port = port or free_port()
        self.processes: list = []            # (name, Popen)
        self.pids: list = []                 # every PID started here or spawned below those
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.env["FLWR_HOME"] = str(self.workdir / "flwr-home")
        package_root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = package_root + os.pathsep + self.env.get("PYTHONPATH", "")
        self.bin = Path(bin_dir)

    def _start(self, name: str, args: list) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.workdir, start_new_session=True)
        log.close()
        self.processes.append((name, proc))
        self.pids.append(proc.pid)
        return proc

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            for name, proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"flower: {name} exited with {proc.returncode}; see "
                                       f"{self.workdir / (name + '.log')}")
            time.sleep(0.2)
        raise TimeoutError(f"flower: nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")

    def start(self, timeout: float = 120.0) -> "LocalFederation":
        """Start the SuperLink, wait for its port, then the SuperNodes (partition p of N each)."""
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self._start("superlink", [str(self.bin / "flower-superlink"), "--insecure", "--port", str(self.port),
                                  "--disable-runtime-dependency-installation"])
        self._wait_port(self.port, timeout)
        for p in range(self.nodes):
            self._start(f"supernode-{p}", [
                str(self.bin / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", f"partition-id={p} num-partitions={self.nodes}"])
        return self

    def run(self, spec: RunSpec, timeout: float = 600.0) -> dict:
        """Submit ``spec`` with ``flwr run`` and wait (at most ``timeout`` s) for the ServerApp's
        result JSON (simulation.flower_json's keys)."""
        result = self.workdir / "result.json"
        if result.exists():
            result.unlink()
        app = write_app(self.workdir / "app", spec, result, wait_s=min(timeout, 300.0))
        deadline = time.monotonic() + timeout
        submit = subprocess.run([str(self.bin / "flwr"), "run", str(app), CONNECTION], env=self.env,
                                cwd=self.workdir, capture_output=True, text=True, timeout=timeout)
        if submit.returncode != 0:
            raise RuntimeError(f"flower: flwr run failed: {submit.stdout[-500:]} {submit.stderr[-500:]}")
        while not result.exists():
            for name, proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"flower: {name} exited with {proc.returncode}; see "
                                       f"{self.workdir / (name + '.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"flower: no result after {timeout:.0f} s; logs in {self.workdir}")
            time.sleep(0.5)
        return json.loads(result.read_text())

    def stop(self, grace: float = 10.0) -> list:
        """Stop every process started here and everything they spawned, by PID: SIGTERM, then
        SIGKILL after ``grace`` seconds. Returns the PIDs signalled."""
        pids = []
        for _, proc in self.processes:
            pids += [proc.pid] + _descendants(proc.pid)
        self.pids = sorted(set(self.pids) | set(pids))
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        for _, proc in self.processes:      # each was started as the leader of its own group
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in pids:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        for _, proc in self.processes:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
        for _, proc in self.processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)                 # the spawned ones end after their parents
        return pids

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """Is ``pid`` a running process (not ended, not a zombie waiting to be reaped)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
