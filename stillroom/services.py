"""Local stand-ins for production services: a moto S3 server, the replay teacher, MLflow.

All are real HTTP servers on 127.0.0.1 started as subprocesses, so boto3 and the openai
SDK talk to them exactly as to AWS and a provider. They are stopped by PID (terminate, then
kill): some servers ignore SIGTERM and would otherwise outlive the demo.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stillroom.env import state_dir

LOOPBACK = "127.0.0.1"


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s")


@dataclass(frozen=True)
class Launch:
    """How a service is started. `detach`: in a session (and process group) of its own, so
    it outlives the shell that started it, ignores that terminal's Ctrl-C, and its group
    can be signalled as one. `on_spawn` hears of it the moment it exists, before it is
    ready: stillroom.stack records it then, so an interrupted start leaves no stray."""

    detach: bool = False
    on_spawn: Callable[[Service], None] | None = None


def start_service(
    name: str,
    argv: list[str],
    url: str,
    health_url: str,
    log_dir: Path,
    ready_s: float = 60.0,
    launch: Launch | None = None,
    env: dict[str, str] | None = None,
) -> Service:
    """Start `argv`, logging to `log_dir/<name>.log`, and wait until `health_url` answers."""
    launch = launch or Launch()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy() if env is None else env,
            start_new_session=launch.detach,
        )
    service = Service(name=name, process=process, url=url, log_path=log_path)
    try:
        if launch.on_spawn:
            launch.on_spawn(service)
        wait_for_http(health_url, process, ready_s)
    except BaseException:  # Ctrl-C too: never leave a half-started server behind
        stop_service(process)
        raise
    return service


def stop_service(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_moto(log_dir: Path, port: int | None = None, launch: Launch | None = None) -> Service:
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
    return start_service("moto-s3", argv, url, f"{url}/moto-api/", log_dir, launch=launch)


def start_teacher(
    replay_path: Path | None,
    log_dir: Path,
    port: int | None = None,
    faults: list[str] | None = None,
    local_model: str | None = None,
    launch: Launch | None = None,
) -> Service:
    """The local teacher: replaying `replay_path`, or serving `local_model` (a folder, or
    `qwen2.5-coder-0.5b`). `faults` are `name=value` items (see teacher_server.Faults)."""
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, "-m", "stillroom.teacher_server", "--host", LOOPBACK]
    argv += ["--port", str(port)]
    if local_model:
        argv += ["--local-model", local_model]
    else:
        argv += ["--replay", str(replay_path)]
    for fault in faults or []:
        argv += ["--fault", fault]
    # A local model is converted once (about two minutes) and loaded each start.
    ready_s = 600.0 if local_model else 60.0
    return start_service("teacher", argv, f"{url}/v1", f"{url}/health", log_dir, ready_s, launch)


def start_mlflow(
    log_dir: Path,
    port: int | None = None,
    backend_uri: str | None = None,
    artifact_root: str | Path | None = None,
    launch: Launch | None = None,
) -> Service:
    """A real MLflow tracking and registry server, met over HTTP as in production.

    By default it serves the local store the pipeline writes (sqlite and artifacts in the
    state folder), so the UI shows what the flows registered. Artifacts go through the
    server (`--artifacts-destination`): clients upload over HTTP and never need its disk.
    One worker and no job runner: each uvicorn worker holds ~250 MB here, and the default
    four plus the job consumer come to about 1.4 GB that a local registry never uses.
    """
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    store = state_dir() / "mlflow"
    if backend_uri is None:
        store.mkdir(parents=True, exist_ok=True)
        backend_uri = f"sqlite:///{store / 'mlflow.db'}"
    destination = store / "artifacts" if artifact_root is None else artifact_root
    if isinstance(destination, Path):  # else a URI such as s3://bucket/mlflow
        destination.mkdir(parents=True, exist_ok=True)
        destination = destination.as_uri()
    # Job execution is only an env switch and start_service passes our environment as is;
    # `env` execs in place, so the PID stop_service signals is still mlflow's launcher, which
    # forwards SIGTERM to its uvicorn worker and waits for it.
    argv = ["env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", sys.executable, "-m", "mlflow"]
    argv += ["server", "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", backend_uri, "--artifacts-destination", destination]
    # Creating the tables of a fresh sqlite store takes ~10 s on two cores.
    return start_service("mlflow", argv, url, f"{url}/health", log_dir, 120.0, launch)


def ensure_local_aws_credentials() -> None:
    """moto accepts any credentials, but boto3 refuses to sign without some."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local-moto")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local-moto")


@contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        stop_service(service.process)
