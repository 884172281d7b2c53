"""The `relay` command: dev, web, worker, check-config, sign."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

from service.cli import backfill as backfill_cli
from service.cli import dlq as dlq_cli
from service.cli import trace as trace_cli
from service.cli.connect import address_in_use, check_all
from service.config import Settings, settings_or_exit
from service.config.reader import is_utf8
from service.core.version import version
from service.destinations.registry import NAMES as DESTINATIONS
from service.mapping.rules import undocumented_types
from service.ops.metrics_dir import MetricsDirError, use_metrics_dir
from service.sources.registry import SOURCES
from service.store import keys
from service.store.durability import OFF, check_at_start, failover_warning

APP_TARGET = "service:create_app()"
MAX_WORKER_PROCESSES = 64  # live-lane processes of one `relay worker` (more pods scale further)
GRACEFUL_TIMEOUT_SECONDS = 30  # requests in hand at SIGTERM (deploy/base/web.yaml's grace covers it)


def gunicorn_argv(settings: Settings, bind: str) -> list[str]:
    options = {
        "--bind": bind,
        # gevent: one greenlet per connection, so slow clients (stalled mid-headers or mid-body) hold
        # no thread; gthread's threads each wait on one client (tests/integration/test_slow_clients.py).
        "--worker-class": "gevent",
        "--worker-connections": "1000",
        "--workers": str(settings.web_workers),
        "--threads": str(settings.web_threads),  # gthread only: unused by gevent
        "--keep-alive": str(settings.web_keepalive_seconds),
        "--graceful-timeout": str(GRACEFUL_TIMEOUT_SECONDS),
        "--log-level": settings.log_level.lower(),
    }
    # No control socket: gunicornc is unused, and $HOME is read-only in the container.
    return [
        sys.executable,
        "-m",
        "gunicorn",
        *(x for pair in options.items() for x in pair),
        "--no-control-socket",
        "--config",
        "python:service.cli.gunicorn_hooks",
        APP_TARGET,
    ]


def cmd_web(args: argparse.Namespace) -> int:
    settings = settings_or_exit("web")
    refusal, unchecked = (
        check_at_start(settings.redis_url, settings.durable_ack) if settings.durable_ack != OFF else (None, None)
    )
    if refusal:
        print(f"relay: {refusal}", file=sys.stderr)
        return 2
    warnings = [failover_warning(settings.redis_url, settings.durable_ack), unchecked]
    for warning in filter(None, [*warnings, *undocumented_types(settings.mapping)]):
        print(f"relay: warning: {warning}", file=sys.stderr)
    bind = args.bind or f"0.0.0.0:{settings.port}"
    host, _, port = bind.rpartition(":")
    if not bind.startswith("unix:") and address_in_use(host, int(port)):  # else gunicorn's dozen lines, exit 1
        print(
            f"relay: {bind} is already in use (another relay web?); choose another with --bind or PORT", file=sys.stderr
        )
        return 2
    use_metrics_dir(settings.metrics_dir, "web")
    argv = gunicorn_argv(settings, bind)
    os.execv(argv[0], argv)  # noqa: S606 - gunicorn becomes this process: signals reach it directly
    return 0  # pragma: no cover


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_or_exit("worker")
    if args.lane is None and not args.burst and address_in_use(settings.metrics_bind, settings.metrics_port):
        print(
            f"relay: RELAY_METRICS_PORT {settings.metrics_port} is already in use "
            "(another `relay worker` on this host?); set another port",
            file=sys.stderr,
        )
        return 2
    from service.ops.logs import configure_logging

    configure_logging(settings.log_level, settings.secrets)  # the supervisor's own lines too (periodic reconcile)
    if args.lane is None:
        # before the imports below define metrics; a burst run serves none: a directory of its own, not the
        # pod's (`kubectl exec ... relay worker --burst` emptied the live workers' files)
        use_metrics_dir("" if args.burst else settings.metrics_dir, "worker")
        from workers.supervisor import supervise

        then = None
        if settings.reconcile_interval_seconds:  # RELAY_RECONCILE_INTERVAL: one instance cluster-wide (a Redis lock)
            from service.backfill import periodic

            then = partial(periodic.start, settings)
        return supervise(
            settings, concurrency=args.concurrency, burst=args.burst, metrics_port=settings.metrics_port, then=then
        )
    from workers.runner import run_worker

    destination = args.destination or settings.destinations[0]
    ended_as_asked = run_worker(
        settings, lane=args.lane, destination=destination, burst=args.burst, log_level=settings.log_level
    )
    return 0 if ended_as_asked else 1  # non-zero: the supervisor stops the set, and the orchestrator restarts it


def cmd_check_config(args: argparse.Namespace) -> int:

    settings = settings_or_exit(args.role)
    print(f"relay: configuration OK for role {args.role}")
    for source, spec in SOURCES.items():
        count = len(settings.source_secrets(source))
        print(f"  {source}: {f'{count} secret(s)' if count else f'off (set {spec.secret_env})'}")
    for destination in settings.destinations:
        print(f"  {destination}: {settings.destination(destination).api_url or '(not set)'}")
    print(f"  identity key: {settings.identity_key}")
    warning = failover_warning(settings.redis_url, settings.durable_ack)
    print(f"  durable ack: {settings.durable_ack}" + (f" (warning: {warning})" if warning else ""))
    for source, rules in settings.mapping.rules.items():
        print(f"  mapped {source} events ({len(rules)}): {', '.join(sorted(rules))}")
    for warning in undocumented_types(settings.mapping):
        print(f"relay: warning: {warning}", file=sys.stderr)
    if args.connect:
        print("relay: connecting (no data is sent)")
        if not check_all(settings, print):
            print("relay: a dependency is unreachable", file=sys.stderr)
            return 1
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Print the signature header(s) a source would send for a file: handy with curl while testing.
    A single header prints as its value alone (`-H "Stripe-Signature: $(relay sign ...)"`).
    A secret the relay would refuse, or a file it cannot read, is one line and exit 2."""

    spec = SOURCES[args.source]
    problem = spec.secret_problem(args.secret) if spec.secret_problem else None
    if problem:
        print(f"relay sign: --secret is not usable: {problem}", file=sys.stderr)
        return 2
    try:
        payload = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"relay sign: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    headers = spec.sign(payload, args.secret, int(time.time()))
    if len(headers) == 1:
        print(next(iter(headers.values())))
    else:
        print("\n".join(f"{name}: {value}" for name, value in headers.items()))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from service.cli.dev import run_dev

    return run_dev(port=args.port, data_dir=Path(args.data_dir))


def _whole(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {low}-{high}" if high is not None else f"must be at least {low}")
    return value


def _port(text: str) -> int:
    return _whole(text, 1, 65535)


def _processes(text: str) -> int:
    return _whole(text, 1, MAX_WORKER_PROCESSES)


def _bind(text: str) -> str:
    """gunicorn's --bind, checked here (a bad one was a traceback from the socket): HOST:PORT, [IPv6]:PORT
    (port 0: any free one), or unix:PATH."""
    if text.startswith("unix:") and len(text) > len("unix:"):
        return text
    host, _, port = text.rpartition(":")
    if not (
        host and text.isascii() and text.isprintable() and " " not in text and port.isdigit() and int(port) <= 65535
    ):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port 0-65535) or unix:PATH")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Billing webhooks in, CRM user updates out.")
    parser.add_argument("--version", action="version", version=f"relay {version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run everything locally: Redis, web, worker and a User.com sandbox")
    dev.add_argument("--port", type=_port, default=8000, help="web port (default 8000)")
    dev.add_argument("--data-dir", default=".relay-dev", help="where the dev Redis keeps its data")
    dev.set_defaults(func=cmd_dev)
    web = sub.add_parser("web", help="serve the webhook endpoints with gunicorn")
    web.add_argument("--bind", type=_bind, help="HOST:PORT or unix:PATH (default 0.0.0.0:$PORT, PORT defaults to 8000)")
    web.set_defaults(func=cmd_web)
    worker = sub.add_parser("worker", help="deliver queued updates to the destinations (scheduler included)")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.add_argument(
        "--concurrency",
        type=_processes,
        default=1,
        help=f"live-lane worker processes (default 1, at most {MAX_WORKER_PROCESSES})",
    )
    worker.add_argument("--lane", choices=list(keys.LANES), help="run one worker process on this lane only")
    worker.add_argument(
        "--destination", choices=list(DESTINATIONS), help="with --lane: the destination (default: the first configured)"
    )
    worker.set_defaults(func=cmd_worker)
    check = sub.add_parser("check-config", help="validate the environment and the mapping, then exit")
    check.add_argument("--role", choices=["web", "worker", "all"], default="all", help="which process (default all)")
    check.add_argument(
        "--connect", action="store_true", help="also reach Redis and each destination (a HEAD request, no data)"
    )
    check.set_defaults(func=cmd_check_config)
    sign = sub.add_parser("sign", help="print the signature header(s) for a payload file (Stripe's by default)")
    sign.add_argument("file", help="the payload file (JSON) to sign")
    sign.add_argument("--secret", required=True, help="the source's signing secret (Stripe: whsec_...)")
    sign.add_argument("--source", default="stripe", choices=list(SOURCES), help="whose signature (default stripe)")
    sign.set_defaults(func=cmd_sign)
    dlq_cli.add_parser(sub)
    trace_cli.add_parser(sub)
    backfill_cli.add_parsers(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command `args` chose (`relay dlq list`'s for `relay dlq list ...`)."""
    for action in parser._actions:  # argparse keeps its subcommands there only
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _command_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def _not_utf8(command: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The line refusing an argument that is not UTF-8 (its bytes reach Python as lone surrogates, and
    every id, path or filter made of it would fail later, as a traceback), or None."""
    for action in command._actions:
        value = getattr(args, action.dest, None)
        if isinstance(value, str) and not is_utf8(value):
            name = action.option_strings[0] if action.option_strings else action.dest.replace("_", "-")
            return f"{command.prog}: {name} is not valid UTF-8"
    return None


def main(argv: list[str] | None = None) -> int:
    # `kill -USR1 <pid>` prints every thread's stack to stderr: what a process that will not stop is doing.
    with contextlib.suppress(ValueError, OSError):  # a stderr with no file behind it (called in-process)
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # refused by the command's own parser: its usage, not relay's
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    if problem := _not_utf8(_command_parser(parser, args), args):
        print(problem, file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MetricsDirError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C where a command does not stop cleanly itself (or a second one)
        print(f"\nrelay {args.command}: stopped (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
