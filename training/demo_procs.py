"""The processes `seqcast demo` starts, and how it makes sure none of them outlives it.

Every child (Tansu, redis-server, `python -m streamer serve`) is started
  - in its own session, so a terminal Ctrl-C reaches only the demo, which then
    stops the children in order: the service first (SIGTERM: it finishes its
    batch, flushes and commits while the broker is still up), then the rest;
    every stop is bounded: SIGTERM to the child's process group, its grace
    period, then SIGKILL, and at most KILL_WAIT_S more for the kill to land;
  - with PR_SET_PDEATHSIG=SIGKILL (Linux), so even a SIGKILLed demo takes its
    children with it;
  - with DEMO_RUN_ENV=<run id> in its environment and its pid in the pid file,
    so a test can prove that nothing survived.

The service inherits the user's SEQCAST_* variables, less the security settings of a broker or
Redis that the demo starts itself (`without_security`): those are plaintext with no users, and a
CA file or an ACL password meant for the user's own cluster would make the service try TLS or a
login there. The demo's own Redis calls (`redis_answers`, `delete_keys`) are here too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from streamer.embedded import redis_server_binary, tansu_command, wait_for_port
from streamer.settings import ENV_PREFIX, FILE_SUFFIX, Settings

if TYPE_CHECKING:
    import redis

DEMO_RUN_ENV = "SC_DEMO_RUN"  # not SEQCAST_*: the service's settings reject unknown SEQCAST_ names
PR_SET_PDEATHSIG = 1
SIDECAR_GRACE_S = 2.0  # Tansu and redis-server keep nothing the demo needs: SIGTERM, then SIGKILL soon
KILL_WAIT_S = 1.0  # after SIGKILL; a process that is still there is left to PR_SET_PDEATHSIG

# How to reach the user's own Kafka and Redis (derived from Settings, so a new security setting is
# covered without a change here). redis_cluster too: the local or embedded Redis is a single node.
KAFKA_SECURITY = tuple(f.name for f in fields(Settings) if f.name.startswith(("kafka_security_", "kafka_sasl_",
                                                                              "kafka_ssl_")))
REDIS_SECURITY = tuple(f.name for f in fields(Settings) if f.name.startswith(("redis_username", "redis_password",
                                                                              "redis_ssl_", "redis_cluster")))


def without_settings(environ: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """`environ` less SEQCAST_<NAME> and SEQCAST_<NAME>_FILE for each of these setting names."""
    drop = {f"{ENV_PREFIX}{name.upper()}{suffix}" for name in names for suffix in ("", FILE_SUFFIX)}
    return {key: value for key, value in environ.items() if key not in drop}


def without_security(environ: Mapping[str, str], own_kafka: bool, own_redis: bool) -> dict[str, str]:
    """`environ` less the Kafka security settings when the demo starts the broker (own_kafka), and
    less the Redis ones when it uses a local or embedded Redis (own_redis): both are plaintext."""
    return without_settings(environ, (KAFKA_SECURITY if own_kafka else ()) + (REDIS_SECURITY if own_redis else ()))


def redis_answers(url: str) -> bool:
    """True when a plaintext Redis at `url` (local or embedded: no user) answers PING within half a second."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def user_redis_answers(settings: Settings) -> bool:
    """True when the user's Redis (settings.redis_url, with its ACL user, password and TLS files) answers
    PING as the service will connect; False when nothing answers; SecurityError (streamer.connections.
    check_redis) for a refused login, permission or certificate, which waiting would not fix."""
    import redis

    from streamer.connections import check_redis, redis_client

    try:
        client = redis_client(settings, timeout_s=3.0)  # RedisCluster connects here, and may refuse here
        try:
            check_redis(settings, client)
        finally:
            _close_quietly(client)
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
        return False
    return True


def delete_keys(settings: Settings, prefix: str) -> str | None:
    """Delete this run's keys (prefix:*) from the Redis of `settings` (with its user and TLS files).

    Short socket timeouts: this runs during shutdown (the caller also bounds the whole step). A Redis
    that is gone is skipped quietly; one that refuses (an ACL user without SCAN or DEL, as the least
    privileges the service needs do not include SCAN) returns a sentence, so the user learns which
    keys remain."""
    import redis

    from streamer.connections import redis_client
    from streamer.security import describe_redis_failure, redact_url

    client = redis_client(settings, timeout_s=1.0)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        return None
    except redis.ResponseError as err:  # NOPERM and the like: the server answered, and said no
        # (redis-py strips the NOPERM code from the message, so describe_redis_failure may not know it)
        reason = describe_redis_failure(err, settings.redis_url, settings.redis_security()) or \
            f"Redis user '{settings.redis_username or 'default'}' at {redact_url(settings.redis_url)}: {err}"
        return f"this run's Redis keys {prefix}:* remain: {reason}"
    except (redis.RedisError, OSError):
        return None
    finally:
        _close_quietly(client)


def _close_quietly(client: redis.Redis) -> None:
    try:
        client.close()
    except Exception:  # closing a client whose server vanished: nothing left to tidy
        pass


def _die_with_parent_hook():
    """A preexec_fn that makes the child get SIGKILL when the demo dies (Linux only, else None)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the demo died between fork and prctl
            os._exit(1)
    return hook


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    graceful_s: float  # how long SIGTERM gets before SIGKILL


class Children:
    """Processes this demo started, stopped newest first.

    `pid_file` gets a `run <run id>` line, then one `name pid` line per child.
    """

    def __init__(self, run_id: str, pid_file: Path | None = None) -> None:
        self.run_id = run_id
        self.pid_file = pid_file
        self.started: list[Child] = []
        self._hook = _die_with_parent_hook()
        if pid_file is not None:
            pid_file.write_text(f"run {run_id}\n")

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
              graceful_s: float = SIDECAR_GRACE_S, cwd: Path | None = None) -> subprocess.Popen:
        """Start `argv` with stdout and stderr appended to `log`."""
        env = dict(os.environ if env is None else env, **{DEMO_RUN_ENV: self.run_id})
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=self._hook, cwd=cwd)
        self.started.append(Child(name, proc, graceful_s))
        if self.pid_file is not None:
            with open(self.pid_file, "a") as out:
                out.write(f"{name} {proc.pid}\n")
        return proc

    def start_tansu(self, port: int, log: Path, schema_registry: Path | None = None) -> subprocess.Popen:
        """An in-memory Tansu on 127.0.0.1:port (the argv of streamer.embedded.start_tansu), validating
        produced records against `schema_registry`'s `<topic>.json` schemas when given."""
        # Tansu 0.6 reads a file:// registry path relative to its working directory ("/abs" -> "$PWD/abs"):
        # from "/", an absolute path means itself. Memory storage does not care where it runs.
        proc = self.start("tansu", tansu_command(port, schema_registry), log,
                          cwd=None if schema_registry is None else Path("/"))
        wait_for_port(port)
        return proc

    def start_redis(self, port: int, log: Path) -> subprocess.Popen:
        """A throw-away redis-server on 127.0.0.1:port: no snapshots, no append-only file."""
        proc = self.start("redis-server", [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1",
                                           "--save", "", "--appendonly", "no"], log)
        wait_for_port(port)
        return proc

    def get(self, name: str) -> subprocess.Popen | None:
        return next((c.proc for c in self.started if c.name == name), None)

    def stop(self, name: str) -> int | None:
        """Stop one child (SIGTERM, then SIGKILL after its grace period); its exit code (None: not started,
        or it outlived even SIGKILL's wait)."""
        for child in [c for c in self.started if c.name == name]:
            code = _stop(child)
            self.started.remove(child)
            return code
        return None

    def stop_all(self) -> None:
        """Stop every child still running, newest first; a second Ctrl-C here kills the rest at once."""
        try:
            while self.started:
                _stop(self.started[-1])
                self.started.pop()
        except KeyboardInterrupt:
            self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every child still running, all at once (no grace periods: the user asked twice)."""
        for child in self.started:
            _signal(child.proc, signal.SIGKILL)
        for child in self.started:
            _reap(child.proc, KILL_WAIT_S)
        self.started.clear()


def _stop(child: Child) -> int | None:
    """SIGTERM, up to `graceful_s` for a clean exit, then SIGKILL: at most graceful_s + KILL_WAIT_S."""
    proc = child.proc
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            return proc.wait(timeout=child.graceful_s)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
    return _reap(proc, KILL_WAIT_S)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Signal the child's whole process group (it leads its own session), so a grandchild goes too.

    Only while the child is unreaped: until then its pid, and so its group id, cannot be reused."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(sig)


def _reap(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """The exit code, waiting at most timeout_s; None if the process is somehow still there."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
