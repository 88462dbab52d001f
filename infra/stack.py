"""The team stack as real processes on one box, on loopback: PostgreSQL (Debian's), an
S3-compatible object store (moto's server, behind a TCP front that can be taken down), the
MLflow tracking server on PostgreSQL with its artifacts in the store, the Prefect server on
PostgreSQL with the `cadenza-process` work pool and a process worker. The DVC remote lives in
the same store (bucket `dvc`).

    python infra/stack.py up [--dir .stack]    start everything, print the environment to
                                               export, wait; Ctrl-C stops everything
    python infra/stack.py down [--dir .stack]  stop a stack started in that folder

The tests (tests/test_stack.py) use the same `Stack` class. The object store is moto's
server: no maintained open-source S3 server installs from the registries these machines
reach (infra/README.md). Its contents live in memory, so "the store is down" is modelled by
closing its front port (`Stack.stop("store")`), which keeps the contents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "cadenza"
SECRET_KEY = "cadenza-secret"  # loopback only; a team sets its own (infra/.env.example)
REGION = "us-east-1"
BUCKETS = ("mlflow", "dvc")
POOL = "cadenza-process"
BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """A service did not start; the message names it and where its log is."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as `nobody` then."""
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None:
                raise StackError(
                    f"{url}: the server exited; its log {log}:\n{_tail(log)}"
                ) from None
            if time.monotonic() > deadline:
                raise StackError(f"{url} did not answer in {timeout:.0f} s; log {log}") from None
            time.sleep(0.3)


def _tail(log: Path, num_chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-num_chars:] if log.is_file() else ""


class Stack:
    """Start, stop and address the services. Ports are picked free at start; `env()` is what
    a client (a checkout, the worker, a test) exports to use them."""

    def __init__(self, folder: Path, workspace: Path | None = None):
        self.folder = Path(folder).resolve()
        self.workspace = workspace
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.logs = self.folder / "logs"
        self._pg_data = self.folder / "postgres" / "data"

    # -- addresses ------------------------------------------------------------------------
    @property
    def postgres_url(self) -> str:
        return f"cadenza@127.0.0.1:{self.ports['postgres']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['store']}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    def env(self) -> dict[str, str]:
        """The client environment: tracking, orchestration and object-store credentials."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "PREFECT_API_URL": self.prefect_api,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(self.folder / "prefect-home"),
        }

    def _process_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.env())
        env.update(extra)
        return env

    # -- lifecycle ------------------------------------------------------------------------
    def up(self, worker: bool = True) -> Stack:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for name in ("postgres", "moto", "store", "mlflow", "prefect"):
            self.ports.setdefault(name, free_port())
        try:
            self._start_postgres()
            self._start_store()
            self.start("mlflow")
            self.start("prefect")
            self._create_pool()
            if worker:
                self.start("worker")
        except BaseException:
            self.down()
            raise
        (self.folder / "stack.json").write_text(
            json.dumps(
                {
                    "ports": self.ports,
                    "env": self.env(),
                    "pids": self._pids(),
                    "up_pid": os.getpid(),
                },
                indent=2,
            )  # fmt: skip
        )
        return self

    def down(self, remove_data: bool = False) -> None:
        """Stop every service; remove_data also deletes PostgreSQL's data folder."""
        for name in ("worker", "prefect", "mlflow", "store", "moto"):
            self.stop(name)
        if self._pg_data.is_dir() and "postgres" in self.ports:
            subprocess.run(
                _as_postgres_user([str(postgres_bin() / "pg_ctl"), "-D", str(self._pg_data),
                                   "-m", "fast", "-w", "stop"]),
                capture_output=True, check=False,
            )  # fmt: skip
        if remove_data and self._pg_data.parent.name.startswith("cadenza-postgres-"):
            shutil.rmtree(self._pg_data.parent, ignore_errors=True)

    def kill_worker(self) -> list[int]:
        """SIGKILL the worker and every process under it (the flow run, its `dvc repro`, the
        stage), as when its machine dies; returns the pids killed."""
        import psutil

        process = self.processes.pop("worker")
        tree = psutil.Process(process.pid)
        victims = [tree, *tree.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
        psutil.wait_procs(victims, timeout=10)
        process.wait(timeout=10)
        return [victim.pid for victim in victims]

    def _pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.poll() is None}

    def start(self, name: str) -> None:
        """(Re)start one service: store (the front), mlflow, prefect, worker."""
        starters = {
            "store": self._start_front,
            "mlflow": self._start_mlflow,
            "prefect": self._start_prefect,
            "worker": self._start_worker,
        }
        starters[name]()

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one service and everything it started (its process group)."""
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def _spawn(self, name: str, command: list[str], **env: str) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        with log.open("a") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=self.workspace or self.folder,
                env=self._process_env(**env), start_new_session=True,
            )  # fmt: skip
        self.processes[name] = process
        return process

    # -- the services ---------------------------------------------------------------------
    def _start_postgres(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise StackError("PostgreSQL is not installed (Debian: apt install postgresql)")
        # Not under a folder `nobody` cannot enter when run as root.
        base = Path(tempfile.mkdtemp(prefix="cadenza-postgres-"))
        if os.geteuid() == 0:
            shutil.chown(base, "nobody")
        link = self.folder / "postgres"
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(base)
        self._pg_data = base / "data"
        port = self.ports["postgres"]
        log = self.logs / "postgres.log"
        initdb = subprocess.run(
            _as_postgres_user([str(bin_dir / "initdb"), "-D", str(self._pg_data), "-U", "cadenza",
                               "--auth=trust", "-E", "UTF8"]),
            capture_output=True, text=True,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise StackError(f"initdb failed: {initdb.stderr[-2000:]}")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
        started = subprocess.run(
            _as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(self._pg_data), "-l",
                               str(base / "postgres.log"), "-o", options, "-w", "start"]),
            capture_output=True, text=True,
        )  # fmt: skip
        if started.returncode != 0:
            raise StackError(f"PostgreSQL did not start: {started.stderr}; log {log}")
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=port, user="cadenza", dbname="postgres"
        )
        connection.autocommit = True
        for database in ("mlflow", "prefect"):
            connection.cursor().execute(f"CREATE DATABASE {database}")
        connection.close()

    def _start_store(self) -> None:
        """moto's S3 server on an inner port, the front (a TCP relay) on the public one."""
        inner = self.ports["moto"]
        process = self._spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1",
                                       "-p", str(inner)])  # fmt: skip
        wait_for_http(f"http://127.0.0.1:{inner}/moto-api/", process, self.logs / "moto.log", 60)
        self._start_front()
        import boto3

        s3 = boto3.client(
            "s3", endpoint_url=self.s3_endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION,
        )  # fmt: skip
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)

    def _start_front(self) -> None:
        process = self._spawn(
            "store",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "relay",
                str(self.ports["store"]),
                str(self.ports["moto"]),
            ],
        )
        wait_for_http(f"{self.s3_endpoint}/moto-api/", process, self.logs / "store.log", 30)

    def _start_mlflow(self) -> None:
        process = self._spawn(
            "mlflow",
            [str(BIN / "mlflow"), "server",
             "--backend-store-uri", f"postgresql+psycopg2://{self.postgres_url}/mlflow",
             "--artifacts-destination", "s3://mlflow/artifacts", "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.ports["mlflow"]), "--workers", "1"],
            MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint,
        )  # fmt: skip
        wait_for_http(f"{self.mlflow_uri}/health", process, self.logs / "mlflow.log", 180)

    def _start_prefect(self) -> None:
        process = self._spawn(
            "prefect",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(self.ports["prefect"]), "--no-ui"],
            PREFECT_API_DATABASE_CONNECTION_URL=(
                f"postgresql+asyncpg://{self.postgres_url}/prefect"
            ),
            PREFECT_UI_ENABLED="false",
        )  # fmt: skip
        wait_for_http(f"{self.prefect_api}/health", process, self.logs / "prefect.log", 180)

    def _create_pool(self) -> None:
        completed = subprocess.run(
            [str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process",
             "--overwrite"],
            env=self._process_env(), capture_output=True, text=True,
        )  # fmt: skip
        if completed.returncode != 0:
            raise StackError(f"work pool {POOL}: {completed.stdout}{completed.stderr}")

    def _start_worker(self) -> None:
        extra = {"CADENZA_WORKSPACE": str(self.workspace)} if self.workspace else {}
        self._spawn(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
             "--name", "stack-worker"],
            PREFECT_WORKER_QUERY_SECONDS=os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "5"),
            **extra,
        )  # fmt: skip

    # -- helpers for a checkout -----------------------------------------------------------
    def configure_dvc(self, repo: Path, remote: str = "store") -> None:
        """Make the store's `dvc` bucket the checkout's default DVC remote."""
        dvc = [str(BIN / "dvc")]
        for args in (
            ["remote", "add", "-f", "-d", remote, "s3://dvc/cadenza"],
            ["remote", "modify", remote, "endpointurl", self.s3_endpoint],
        ):
            subprocess.run([*dvc, *args], cwd=repo, check=True, capture_output=True)


# -- the front: a TCP relay whose port can be closed while the store keeps its contents ------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _relay(listen: int, target: int) -> None:
    async def handle(reader, writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the stack and wait (Ctrl-C stops it)")
    up.add_argument("--dir", type=Path, default=Path(".stack"))
    up.add_argument("--workspace", type=Path, default=Path("."))
    up.add_argument("--no-worker", action="store_true")
    down = commands.add_parser("down", help="stop a stack started with `up` in --dir")
    down.add_argument("--dir", type=Path, default=Path(".stack"))
    relay = commands.add_parser("relay", help=argparse.SUPPRESS)
    relay.add_argument("listen", type=int)
    relay.add_argument("target", type=int)
    args = parser.parse_args()
    if args.command == "relay":
        asyncio.run(_relay(args.listen, args.target))
    elif args.command == "up":
        stack = Stack(args.dir, args.workspace.resolve()).up(worker=not args.no_worker)
        for key, value in stack.env().items():
            print(f"export {key}={value}")
        print(f"# DVC remote: dvc remote add -d store s3://dvc/cadenza && "
              f"dvc remote modify store endpointurl {stack.s3_endpoint}")  # fmt: skip
        print(f"# logs in {stack.logs}; Ctrl-C stops the stack", flush=True)
        # Ctrl-C, or SIGTERM from `down` / a supervisor: stop everything before exiting
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            signal.pause()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            stack.down()
    else:
        _down_from_file(args.dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _down_from_file(folder: Path) -> None:
    """Stop a stack that `up` started: `up` stops its services itself on SIGTERM; any service
    still running 30 s later is killed, and PostgreSQL is stopped."""
    state = json.loads((folder / "stack.json").read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(state["up_pid"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(state["up_pid"]):
        time.sleep(0.5)
    for pid in state["pids"].values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    data = (folder / "postgres").resolve() / "data"
    bin_dir = postgres_bin()
    if bin_dir and data.is_dir():
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres_user(stop), check=False, capture_output=True)


if __name__ == "__main__":
    main()
