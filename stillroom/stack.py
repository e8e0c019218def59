"""The local stack in the background: Prefect server, a worker per pool, MLflow, S3, teacher.

    python -m stillroom.stack serve [--profile demo]   # make serve: start, seed, print the URLs
    python -m stillroom.stack deploy                    # make deploy: prefect.yaml's deployments
    python -m stillroom.stack status                    # make status
    python -m stillroom.stack stop                      # make stop: exactly what serve started

Everything binds 127.0.0.1 and keeps its state and logs in the state folder
(`stack/` for logs, the state file and the teacher's replay file, `prefect/` for
PREFECT_HOME, `mlflow/` for the registry `make demo` also writes). Each process starts in
a session of its own, so it outlives `make serve`'s shell; the state file records its PID,
process group and start time, and `stop` signals those and what they started, nothing
else (a PID the kernel has since reused is left alone). Ports default to the usual ones
and are set with STILLROOM_{PREFECT,MLFLOW,S3,TEACHER}_PORT.

The library never imports Prefect: this module drives the `prefect` CLI and the server's
REST API.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from stillroom import services
from stillroom.config import load_config
from stillroom.env import apply_offline_env, project_root, state_dir

# Where each service listens unless its variable says otherwise. 8765 is the teacher
# `configs/base.yaml` names; 9000 is the S3 endpoint the README's examples use.
PORTS: dict[str, tuple[str, int]] = {
    "prefect": ("STILLROOM_PREFECT_PORT", 4200),
    "mlflow": ("STILLROOM_MLFLOW_PORT", 5000),
    "s3": ("STILLROOM_S3_PORT", 9000),
    "teacher": ("STILLROOM_TEACHER_PORT", 8765),
}
# The pull step's working directory in prefect.yaml; the worker images set it to /app.
CODE_DIR_ENV = "STILLROOM_CODE_DIR"
# A Prefect worker takes SIGTERM as "stop polling, let the runs finish" and may sit there
# (prefect.utilities.processutils.setup_signal_handlers_worker): SIGKILL after this long.
STOP_GRACE_S = 10.0
KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class Ports:
    prefect: int
    mlflow: int
    s3: int
    teacher: int

    @classmethod
    def from_env(cls) -> Ports:
        return cls(**{key: int(os.environ.get(var, port)) for key, (var, port) in PORTS.items()})


@dataclass
class Recorded:
    """One process the stack started, as the state file keeps it."""

    name: str
    pid: int
    pgid: int
    started: int | None  # clock ticks after boot (/proc/<pid>/stat): tells a reused PID apart
    url: str
    log: str


# --- state ---------------------------------------------------------------------------------


def stack_dir() -> Path:
    path = state_dir() / "stack"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_file() -> Path:
    return stack_dir() / "stack.json"


def load_state() -> dict[str, Any] | None:
    path = state_file()
    return json.loads(path.read_text()) if path.exists() else None


def save_state(state: dict[str, Any]) -> None:
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_file())  # never a half-written file for `stop` to choke on


def recorded(state: dict[str, Any]) -> list[Recorded]:
    return [Recorded(**p) for p in state.get("processes", [])]


# --- processes -----------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start ticks) of a live PID, from /proc; None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def start_ticks(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[3] if stat else None


def is_running(pid: int, started: int | None) -> bool:
    """Alive, not a zombie, and the same process we recorded (not a reused PID)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child and has exited
    if not Path("/proc").is_dir():  # no procfs (macOS): fall back on signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return started is None or stat[3] == started


def descendants(pids: list[int]) -> list[tuple[int, int]]:
    """(pid, start ticks) of every process below `pids`: a flow run the worker started in a
    session of its own, and its trainer, are outside the worker's process group."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))):
            children.setdefault(stat[1], []).append((int(entry.name), stat[3]))
    found: list[tuple[int, int]] = []
    todo = list(pids)
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += [pid for pid, _ in below]
    return found


def send(pid: int, pgid: int | None, sig: signal.Signals) -> None:
    """Signal a process, and its whole group when it leads one we created."""
    try:
        if pgid == pid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_gone(targets: list[tuple[int, int | None]], timeout_s: float) -> list[int]:
    """PIDs still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid, ticks in targets if is_running(pid, ticks)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def record(service: services.Service) -> Recorded:
    pid = service.process.pid
    return Recorded(
        name=service.name,
        pid=pid,
        pgid=os.getpgid(pid),
        started=start_ticks(pid),
        url=service.url,
        log=str(service.log_path),
    )


# --- starting ------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of a stack just stopped, in TIME_WAIT, don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((services.LOOPBACK, port))
        except OSError:
            return False
    return True


def check_ports(ports: Ports) -> None:
    for name, port in asdict(ports).items():
        if not port_free(port):
            var = PORTS[name][0]
            raise SystemExit(f"port {port} ({name}) is taken on 127.0.0.1: set {var}=<free port>")


def prefect_env(api_url: str | None) -> dict[str, str]:
    """The environment of the Prefect server, the workers (and so every flow run they start)
    and the deploy command: this state folder, this checkout, this server."""
    env = os.environ.copy()
    home = state_dir()
    env["STILLROOM_HOME"] = str(home)
    # Forced, not defaulted: a PREFECT_HOME inherited from elsewhere would put the server's
    # database outside the folder `make clean` and `stop` know about.
    env["PREFECT_HOME"] = str(home / "prefect")
    env[CODE_DIR_ENV] = str(project_root())
    env.pop("PREFECT_API_URL", None)  # a server must not think it is a client of another
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def prefect_cli() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def start_prefect_server(port: int, log_dir: Path, launch: services.Launch) -> services.Service:
    url = f"http://{services.LOOPBACK}:{port}"
    argv = [*prefect_cli(), "server", "start", "--host", services.LOOPBACK, "--port", str(port)]
    # Migrating a fresh sqlite database on two busy cores can take a minute.
    return services.start_service(
        "prefect-server", argv, url, f"{url}/api/health", log_dir, 180.0, launch, prefect_env(None)
    )


def api_request(api_url: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{api_url}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def pool_names() -> list[str]:
    """The work pools prefect.yaml's deployments name: one local worker serves each."""
    spec = yaml.safe_load((project_root() / "prefect.yaml").read_text())
    return sorted({d["work_pool"]["name"] for d in spec["deployments"]})


def ensure_pool(api_url: str, pool: str) -> None:
    """Create `pool` as a process pool (with Prefect's default job template) unless it
    exists; one of another type is an error rather than something to overwrite."""
    try:
        found = api_request(api_url, "GET", f"/work_pools/{pool}")
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
        argv = [*prefect_cli(), "--no-prompt", "work-pool", "create", pool, "--type", "process"]
        subprocess.run(argv, env=prefect_env(api_url), check=True, capture_output=True)
        return
    if found["type"] != "process":
        raise SystemExit(f"work pool {pool!r} exists with type {found['type']!r}, not process")


def start_worker(
    pool: str, api_url: str, urls: dict[str, str], log_dir: Path, launch: services.Launch
) -> services.Service:
    env = prefect_env(api_url)
    # As a deployed worker's environment does (infra/compose): a run whose form leaves the
    # service addresses out still finds this stack's MLflow and S3.
    env["MLFLOW_TRACKING_URI"] = urls["mlflow"]
    env["AWS_ENDPOINT_URL_S3"] = urls["s3"]
    # The worker's health endpoint says when it has polled the server: that is "ready".
    health_port = services.free_port()
    env["PREFECT_WORKER_WEBSERVER_HOST"] = services.LOOPBACK
    env["PREFECT_WORKER_WEBSERVER_PORT"] = str(health_port)
    argv = [*prefect_cli(), "--no-prompt", "worker", "start", "--pool", pool]
    argv += ["--type", "process", "--name", f"stillroom-{pool}", "--with-healthcheck"]
    health = f"http://{services.LOOPBACK}:{health_port}/health"
    return services.start_service(
        f"worker-{pool}", argv, health, health, log_dir, 120.0, launch, env
    )


def seed_documents(profile: str, s3_url: str, replay: Path) -> tuple[dict[str, Any], list[str]]:
    """BFCL documents into the (in-memory) bucket and the teacher's replay file, as
    `make demo` does; returns the counts and the profile's teacher faults."""
    from stillroom.seeding import seed_bfcl
    from stillroom.storage import make_s3_client
    from stillroom.targets import load_target

    cfg = load_config(profile, [f"storage.endpoint_url={s3_url}"])
    s3 = make_s3_client(cfg.storage)
    seeded = seed_bfcl(s3, cfg.storage.bucket, cfg.seed, replay, load_target(cfg.target).pii)
    return {**seeded, "bucket": cfg.storage.bucket}, list(cfg.seed.teacher_faults)


def start_all(profile: str, ports: Ports, state: dict[str, Any]) -> None:
    """Start everything, recording each process in the state file the moment it is spawned,
    so a failure part way (or Ctrl-C) leaves `stop` the full list to clean up."""
    logs = stack_dir()
    lock = threading.Lock()

    def keep(service: services.Service) -> None:
        with lock:
            state["processes"].append(asdict(record(service)))
            save_state(state)

    launch = services.Launch(detach=True, on_spawn=keep)
    services.ensure_local_aws_credentials()
    # The servers do not need each other: start them side by side (MLflow and Prefect each
    # spend ~10-30 s creating their databases).
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        prefect, mlflow, s3 = (
            future.result()
            for future in [
                pool.submit(start_prefect_server, ports.prefect, logs, launch),
                pool.submit(services.start_mlflow, logs, ports.mlflow, launch=launch),
                pool.submit(services.start_moto, logs, ports.s3, launch),
            ]
        )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # the caller stops what is left
    state["urls"] = {"prefect": prefect.url, "mlflow": mlflow.url, "s3": s3.url}
    replay = logs / "replay.jsonl"  # not the demo's file: `make demo` may run meanwhile
    seeded, faults = seed_documents(profile, s3.url, replay)
    teacher = services.start_teacher(replay, logs, ports.teacher, faults, launch=launch)
    state.update(seeded=seeded, teacher_faults=faults)
    state["urls"]["teacher"] = teacher.url
    api_url = f"{prefect.url}/api"
    for pool_name in pool_names():
        ensure_pool(api_url, pool_name)
        start_worker(pool_name, api_url, state["urls"], logs, launch)
    save_state(state)


def serve(profile: str = "demo", ports: Ports | None = None) -> dict[str, Any]:
    """Start the stack unless it runs already; returns the state (URLs, processes)."""
    state = load_state()
    if state is not None:
        running = [p for p in recorded(state) if is_running(p.pid, p.started)]
        if running:
            total = len(state["processes"])
            print(f"already serving ({len(running)} of {total} processes up)")
            if len(running) < total:
                print("  `make status` shows which is gone; `make stop && make serve` restarts")
            print_urls(state)
            return state
        print("a previous stack is gone (stale state file): starting a new one")
        state_file().unlink()
    load_config(profile)  # a bad profile fails here, before anything starts
    ports = ports or Ports.from_env()
    check_ports(ports)
    state = {"profile": profile, "home": str(state_dir()), "processes": [], "urls": {}}
    started = time.monotonic()
    try:
        start_all(profile, ports, state)
    except BaseException:
        print(f"serve failed; stopping what started (logs in {stack_dir()})", file=sys.stderr)
        stop()
        raise
    print(f"stack up in {time.monotonic() - started:.0f} s")
    print_urls(state)
    return state


# --- stopping ------------------------------------------------------------------------------


def stop() -> bool:
    """Stop every recorded process (and what they started); True if something was running.

    SIGTERM first, to each recorded process group and to each descendant found now; SIGKILL
    after STOP_GRACE_S for whatever ignored it; then every PID is checked gone.
    """
    state = load_state()
    if state is None:
        print("nothing is running (no stack state file)")
        return False
    live = [p for p in recorded(state) if is_running(p.pid, p.started)]
    if not live:
        print("nothing is running (stale state file removed)")
        state_file().unlink()
        return False
    below = descendants([p.pid for p in live])
    targets: list[tuple[int, int | None]] = [(p.pid, p.started) for p in live] + below
    for p in live:
        send(p.pid, p.pgid, signal.SIGTERM)
    for pid, _ in below:
        send(pid, None, signal.SIGTERM)
    left = wait_gone(targets, STOP_GRACE_S)
    if left:
        print(f"SIGKILL for what ignored SIGTERM for {STOP_GRACE_S:.0f} s: pids {left}")
        groups = {p.pid: p.pgid for p in live}
        for pid in left:
            send(pid, groups.get(pid), signal.SIGKILL)
        left = wait_gone(targets, KILL_WAIT_S)
    if left:
        raise RuntimeError(f"still running after SIGKILL: pids {left} (state kept)")
    state_file().unlink()
    names = ", ".join(f"{p.name} ({p.pid})" for p in live)
    started = f" and {len(below)} process(es) they started" if below else ""
    print(f"stopped {names}{started}")
    return True


# --- deploying -----------------------------------------------------------------------------


def form_overrides(urls: dict[str, str]) -> list[str]:
    """What the deployments' forms need on top of the workers' environment, which names
    MLflow and S3 (start_worker), as a deployed worker's does: only the teacher."""
    return [f"teacher.base_url={urls['teacher']}"]


def localise(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """prefect.yaml for this stack: the same deployments, entrypoints, pools, parameters and
    schedules, except that the teacher's address is this stack's and schedules are paused
    (a nightly GPU retrain should not fire on a laptop that happens to be serving)."""
    spec = copy.deepcopy(spec)
    keys = {override.split("=", 1)[0] for override in overrides}
    for deployment in spec["deployments"]:
        # Every form but gpu-train's (which distill fills in) points at this stack.
        params = (deployment.get("parameters") or {}).get("params")
        if params is not None:
            kept = [o for o in params.get("overrides", []) if o.split("=", 1)[0] not in keys]
            params["overrides"] = kept + overrides
        for schedule in deployment.get("schedules") or []:
            schedule["active"] = False
    return spec


def deploy() -> list[dict[str, Any]]:
    """Register prefect.yaml's deployments against the running server with `prefect deploy
    --all`, from the repository root, as an operator would; returns what the server holds."""
    state = load_state()
    if state is None or not any(is_running(p.pid, p.started) for p in recorded(state)):
        raise SystemExit("the stack is not running: make serve first")
    spec = yaml.safe_load((project_root() / "prefect.yaml").read_text())
    local = localise(spec, form_overrides(state["urls"]))
    path = stack_dir() / "prefect.yaml"
    header = "# Written by `python -m stillroom.stack deploy` from prefect.yaml; edit that one.\n"
    path.write_text(header + yaml.safe_dump(local, sort_keys=False))
    api_url = f"{state['urls']['prefect']}/api"
    argv = [*prefect_cli(), "--no-prompt", "deploy", "--all", "--prefect-file", str(path)]
    result = subprocess.run(
        argv, cwd=project_root(), env=prefect_env(api_url), capture_output=True, text=True
    )
    (stack_dir() / "deploy.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"prefect deploy failed:\n{result.stdout}{result.stderr}")
    deployed = read_deployments(api_url, [d["name"] for d in local["deployments"]])
    ui = state["urls"]["prefect"]
    width = max((len(f"{d['flow_name']}/{d['name']}") for d in deployed), default=0)
    for d in deployed:
        paused = [s for s in d["schedules"] if not s["active"]]
        note = f", {len(paused)} schedule(s) paused" if paused else ""
        full_name = f"{d['flow_name']}/{d['name']}"
        print(f"  {full_name:<{width}}  pool {d['work_pool_name']}{note}")
        print(f"    {ui}/deployments/deployment/{d['id']}")
    return deployed


def read_deployments(api_url: str, names: list[str]) -> list[dict[str, Any]]:
    """The server's view of the named deployments, each with its flow's name."""
    body = {"deployments": {"name": {"any_": names}}}
    found = api_request(api_url, "POST", "/deployments/filter", body)
    for deployment in found:
        flow = api_request(api_url, "GET", f"/flows/{deployment['flow_id']}")
        deployment["flow_name"] = flow["name"]
    return sorted(found, key=lambda d: names.index(d["name"]))


# --- status --------------------------------------------------------------------------------


def print_urls(state: dict[str, Any]) -> None:
    urls = state.get("urls", {})
    seeded = state.get("seeded") or {}
    faults = ", ".join(state.get("teacher_faults") or []) or "no faults"
    rows = [
        ("Prefect UI", urls.get("prefect"), f"API {urls.get('prefect')}/api"),
        ("MLflow UI", urls.get("mlflow"), "tracking and registry"),
        (
            "S3 API (moto)",
            urls.get("s3"),
            f"{seeded.get('documents')} documents (+{seeded.get('bad_documents')} malformed) "
            f"in s3://{seeded.get('bucket')}/requests/",
        ),
        ("teacher", urls.get("teacher"), f"replay, OpenAI-compatible; {faults}"),
    ]
    for label, url, note in rows:
        print(f"  {label:<14} {url or '-':<28} {note}")
    workers = [p for p in recorded(state) if p.name.startswith("worker-")]
    pools = ", ".join(f"pool {p.name.removeprefix('worker-')} (pid {p.pid})" for p in workers)
    print(f"  {'workers':<14} {pools}")
    print(f"  {'logs':<14} {stack_dir()}")
    print(f"  for the prefect CLI: export PREFECT_API_URL={urls.get('prefect')}/api")


def status() -> bool:
    """Print what runs; True when every recorded process is up."""
    state = load_state()
    if state is None:
        print("not serving")
        return False
    processes = recorded(state)
    up = {p.pid: is_running(p.pid, p.started) for p in processes}
    for p in processes:
        print(f"  {p.name:<15} pid {p.pid:<8} {'up' if up[p.pid] else 'GONE'}")
    print_urls(state)
    return all(up.values())


def main() -> None:
    apply_offline_env()
    parser = argparse.ArgumentParser(description="The local Stillroom stack.")
    parser.add_argument("command", choices=["serve", "stop", "deploy", "status"])
    parser.add_argument(
        "--profile", default="demo", help="serve: the profile whose seed fills the bucket"
    )
    args = parser.parse_args()
    if args.command == "serve":
        try:
            serve(args.profile)
        except KeyboardInterrupt:
            raise SystemExit(130) from None  # serve has already stopped what it started
    elif args.command == "stop":
        stop()
    elif args.command == "deploy":
        deploy()
    elif not status():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
