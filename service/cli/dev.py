"""`relay dev`: the whole relay on one machine, nothing pre-installed.

Starts a local Redis (append-only, in --data-dir), a User.com sandbox when no User.com
credentials are set, `relay web` and `relay worker` as child processes, then prints where to
post webhooks, a signed curl example and where to see the result. Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from service.cli.connect import address_in_use
from service.config import Settings, SettingsError
from service.config.sentinel import VARIABLES as SENTINEL_VARIABLES
from service.devtools.embedded_redis import RedisNotFound, RedisProcess, free_port
from service.devtools.usercom_sandbox import SandboxServer
from service.ops.parent_death import dies_with_this_process

DEV_STRIPE_SECRET = "whsec_relay_dev_only_not_a_real_secret"  # noqa: S105 - dev only, printed on purpose
SAMPLE_USER = "dev-user-1"


def sample_event() -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": f"evt_dev_{now}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": now,
        "type": "customer.created",
        "livemode": False,
        "data": {
            "object": {
                "id": "cus_dev_1",
                "object": "customer",
                "email": "ada@example.com",
                "name": "Ada Lovelace",
                "phone": "+442071234567",
                "address": {"city": "London", "country": "GB"},
                "metadata": {"user_id": SAMPLE_USER},
            }
        },
    }


def _wait_ready(
    url: str, children: list[subprocess.Popen[bytes]], stopped: Callable[[], bool], timeout: float = 30.0
) -> None:
    """Until `url` answers 200, or `stopped()` (asked to stop meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopped():
            return
        for child in children:
            if child.poll() is not None:
                raise RuntimeError(f"{shlex.join(map(str, child.args))} exited with {child.returncode}")  # type: ignore[arg-type]
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready in {timeout:.0f}s")


SANDBOX_FILE = "usercom-sandbox.json"
SANDBOX_KEEPS_REQUESTS = 10_000  # the newest calls the sandbox lists (GET /__sandbox__/requests)


def _stale_sandbox(url: str) -> str | None:
    """USERCOM_API_URL on this machine with nothing listening: most likely the `export` line of an
    earlier relay dev, whose sandbox is gone; every update would fail to connect."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None  # the settings say what is wrong with it
    with contextlib.suppress(OSError), socket.create_connection((parts.hostname, port), timeout=1):
        return None
    return (
        f"USERCOM_API_URL {url} answers nothing (the export line of an earlier relay dev?): "
        "unset USERCOM_API_URL USERCOM_API_KEY to run with a sandbox"
    )


LOCK_FILE = "relay-dev.lock"


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[bool]:
    """Holds `data_dir` for this run (False: another `relay dev` holds it). Two runs on one data dir
    would run two Redis servers on one append-only file."""
    with (data_dir / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True  # released when the file closes, also when this process is killed


def run_dev(*, port: int, data_dir: Path) -> int:
    if address_in_use("127.0.0.1", port):  # a connection of the last run in TIME-WAIT does not count
        print(f"relay dev: port {port} is in use; choose another with --port", file=sys.stderr)
        return 2
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / LOCK_FILE).touch()
    except OSError as exc:
        print(f"relay dev: cannot use --data-dir {data_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    with _data_dir_lock(data_dir) as held:
        if not held:
            print(
                f"relay dev: another relay dev is running on {data_dir}; stop it or choose another --data-dir",
                file=sys.stderr,
            )
            return 2
        return _run(port, data_dir)


def _run(port: int, data_dir: Path) -> int:
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    # From the start: a SIGTERM or a closed terminal (SIGHUP) while starting stops it as well, not kills it.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    env = dict(os.environ)
    # Only both set mean "your User.com account": with one of them, relay dev runs its own sandbox.
    if env.get("USERCOM_API_KEY") and (stale := _stale_sandbox(env.get("USERCOM_API_URL", ""))):
        print(f"relay dev: {stale}", file=sys.stderr)
        return 2
    sandbox: SandboxServer | None = None
    if not (env.get("USERCOM_API_URL") and env.get("USERCOM_API_KEY")):
        # Its users are kept in the data dir, so the User.com ids the relay learned stay valid.
        sandbox = SandboxServer(
            api_key=secrets.token_hex(32), data_file=data_dir / SANDBOX_FILE, keep_requests=SANDBOX_KEEPS_REQUESTS
        ).start()
        env["USERCOM_API_URL"], env["USERCOM_API_KEY"] = sandbox.base_url, sandbox.state.api_key
    env.setdefault("STRIPE_WEBHOOK_SECRETS", DEV_STRIPE_SECRET)
    own_token = bool(env.get("RELAY_ADMIN_TOKEN"))
    env.setdefault("RELAY_ADMIN_TOKEN", secrets.token_urlsafe(24))
    env.setdefault("RELAY_METRICS_PORT", str(free_port()))
    env.setdefault("RELAY_METRICS_BIND", "127.0.0.1")  # worker metrics: this machine only
    redis = RedisProcess(data_dir / "redis", die_with_parent=True)
    env["REDIS_URL"] = redis.url
    for name in SENTINEL_VARIABLES:  # this Redis, not the one a shell's sentinels point to
        env.pop(name, None)
    try:
        settings = Settings.from_env(env, role="all")
        redis.start()
    except (SettingsError, RedisNotFound, RuntimeError) as exc:
        print(f"relay dev: {exc}", file=sys.stderr)
        return 2
    relay = [sys.executable, "-m", "service.cli"]
    # Own sessions: Ctrl-C reaches only this process, which then stops web and worker before Redis.
    # Killed (kill -9), it cannot: they are sent SIGTERM by the kernel then (dies_with_this_process).
    children = [
        subprocess.Popen(
            [*relay, "web", "--bind", f"127.0.0.1:{port}"],
            env=env,
            start_new_session=True,
            preexec_fn=dies_with_this_process(),  # prctl only, looked up before the fork
        ),
        subprocess.Popen([*relay, "worker"], env=env, start_new_session=True, preexec_fn=dies_with_this_process()),
    ]
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", children, lambda: stopping)
        if not stopping:
            with contextlib.suppress(OSError):  # its terminal closed meanwhile: stopping follows
                _print_banner(port, settings, data_dir, sandbox, own_token=own_token)
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"relay dev: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) refuses writes: stop all the same
            print("\nrelay dev: stopping...", file=sys.stderr)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        redis.stop()
        if sandbox is not None:
            sandbox.stop()
    return 0


def _print_banner(
    port: int, settings: Settings, data_dir: Path, sandbox: SandboxServer | None, *, own_token: bool
) -> None:
    payload = json.dumps(sample_event(), indent=2).encode()
    sample = data_dir / "sample-event.json"
    sample.write_bytes(payload)
    secret = settings.source_secrets("stripe")[0]
    endpoint = f"http://127.0.0.1:{port}/webhooks/stripe"
    relay = shlex.quote(str(Path(sys.executable).with_name("relay")))
    # A secret of your own is not printed: the shell reads the first of STRIPE_WEBHOOK_SECRETS instead.
    own = secret != DEV_STRIPE_SECRET
    shown_secret = '"${STRIPE_WEBHOOK_SECRETS%%,*}"' if own else secret
    # The sandbox's key is made up for this run; a real User.com key is never printed.
    usercom_key = sandbox.state.api_key if sandbox is not None else "$USERCOM_API_KEY"
    # Nor an admin token of your own: the shell reads it from $RELAY_ADMIN_TOKEN.
    token = "$RELAY_ADMIN_TOKEN" if own_token else settings.admin_token
    lines = [
        "",
        "relay dev is running",
        f"  post Stripe webhooks to  {endpoint}",
        f"  stripe signing secret    {'the first of $STRIPE_WEBHOOK_SECRETS' if own else secret}",
        f"  admin token              {'yours, ' if own_token else ''}{token}",
        f"  health                   http://127.0.0.1:{port}/healthz  /readyz",
        f"  status, metrics, API     http://127.0.0.1:{port}/status  /metrics  /openapi.json",
        f"  worker metrics           http://127.0.0.1:{settings.metrics_port}/metrics",
        f'  dead-letter queue        curl -H "Authorization: Bearer {token}" http://127.0.0.1:{port}/admin/dlq',
        f"  console                  http://127.0.0.1:{port}/console  (sign in with the admin token above)",
        "",
        "use this instance from another terminal (relay dlq, relay trace, a second relay worker):",
        f"  export REDIS_URL={settings.redis_url} RELAY_ADMIN_TOKEN={token} \\",
        f"    USERCOM_API_URL={settings.destination('usercom').api_url} USERCOM_API_KEY={usercom_key}",
        "",
        "send a signed sample event (customer.created for user 'dev-user-1'):",
        f"  curl -sS {endpoint} -H 'Content-Type: application/json' \\",
        f'    -H "Stripe-Signature: $({relay} sign --secret {shown_secret} {sample})" \\',
        f"    --data-binary @{sample}",
        "",
    ]
    if sandbox is not None:
        root = sandbox.base_url.removesuffix("/api/public")
        lines += [
            "see the result in the User.com sandbox:",
            f"  curl -sS {root}/__sandbox__/users",
            f"  curl -sS -H 'Authorization: Token {sandbox.state.api_key}' \\",
            f"    {sandbox.base_url}/users-by-id/{SAMPLE_USER}/",
        ]
    else:
        lines.append(f"updates go to {settings.destination('usercom').api_url} (your User.com account)")
    lines += ["", "Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)
