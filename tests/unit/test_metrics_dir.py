"""PROMETHEUS_MULTIPROC_DIR: only prometheus-client's own files are ever deleted."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from service.ops import metrics_dir
from service.ops.metrics_dir import MetricsDirError, forget_this_pid_from_before, prepare_multiprocess_dir
from tests.integration.test_cli import GOOD, relay
from tests.ports import unused_port

METRIC_FILES = ["counter_12.db", "gauge_all_12.db", "gauge_livesum_7.db", "histogram_12.db", "summary_3.db"]


def test_metric_files_of_an_earlier_run_are_deleted(tmp_path: Path) -> None:
    for name in METRIC_FILES:
        (tmp_path / name).write_bytes(b"\0" * 16)
    prepare_multiprocess_dir(str(tmp_path))
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("other", ["notes.txt", "counter_12.db.bak", "data.db", "sub/"])
def test_a_directory_holding_anything_else_is_refused_and_left_alone(tmp_path: Path, other: str) -> None:
    (tmp_path / "counter_12.db").write_bytes(b"\0")
    (tmp_path / other).mkdir() if other.endswith("/") else (tmp_path / other).write_text("keep me")
    with pytest.raises(MetricsDirError) as raised:
        prepare_multiprocess_dir(str(tmp_path))
    assert "\n" not in str(raised.value) and other.rstrip("/") in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["counter_12.db", other.rstrip("/")])


@pytest.mark.parametrize("command", ["web", "worker"])
def test_relay_refuses_a_wrong_metrics_dir_in_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "important.txt").write_text("keep me")
    result = relay(
        command, env={**GOOD, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "RELAY_METRICS_PORT": str(unused_port())}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay: PROMETHEUS_MULTIPROC_DIR"), result.stderr
    assert (tmp_path / "important.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["important.txt"]  # refused before a metric wrote its file


@pytest.mark.parametrize("command", ["web", "worker"])
def test_relay_names_a_metrics_dir_it_cannot_make_in_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "a-file").write_text("")
    where = tmp_path / "a-file" / "metrics"
    result = relay(
        command, env={**GOOD, "PROMETHEUS_MULTIPROC_DIR": str(where), "RELAY_METRICS_PORT": str(unused_port())}
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"relay: PROMETHEUS_MULTIPROC_DIR {where} cannot be used: Not a directory"
    ]


def test_this_process_own_files_stay_an_earlier_runs_go(tmp_path: Path) -> None:
    """`relay worker` readies the directory after its modules defined their metrics: the files this
    process wrote meanwhile are its live metrics, the rest an earlier run's."""
    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(b"\0" * 16)
    (tmp_path / "counter_1.db").write_bytes(b"\0" * 16)
    prepare_multiprocess_dir(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [f"counter_{os.getpid()}.db"]


@pytest.mark.parametrize("args", [["worker"], ["worker", "--help"], ["web", "--help"]])
def test_a_command_that_does_not_start_leaves_the_live_files_be(tmp_path: Path, args: list[str]) -> None:
    """The pod's directory holds the live processes' files: `kubectl exec ... relay worker --help`, or a
    second worker refused for its metrics port, deleted them."""
    (tmp_path / "counter_4242.db").write_bytes(b"\0" * 16)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - where the worker's metrics server would listen
        taken.listen()
        env = {**GOOD, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "RELAY_METRICS_PORT": str(taken.getsockname()[1])}
        result = relay(*args, env=env)
    assert result.returncode == (0 if "--help" in args else 2), result.stderr
    assert (tmp_path / "counter_4242.db").read_bytes() == b"\0" * 16  # still there, as it was


def test_this_pids_files_from_an_earlier_process_go_before_any_metric_is_defined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted container reuses pids: prometheus-client would open the earlier process's file and
    carry on from its values, then the directory's preparation would delete it under it."""
    mine, other = tmp_path / f"histogram_{os.getpid()}.db", tmp_path / "histogram_4242.db"
    mine.write_bytes(b"\0" * 16)
    other.write_bytes(b"\0" * 16)
    forget_this_pid_from_before(str(tmp_path))
    assert mine.exists() and other.exists()  # written since this process started: its own
    monkeypatch.setattr(metrics_dir, "_process_start", lambda: time.time() + 60)  # as if it started after them
    forget_this_pid_from_before(str(tmp_path))
    assert not mine.exists() and other.exists()  # another pid's: a live process's, maybe


def test_a_burst_worker_leaves_the_pods_files_be(tmp_path: Path, redis_server: Any) -> None:
    """`kubectl exec ... relay worker --burst` serves no metrics, and emptied the live workers' files. Its
    own directory (a temporary one) is gone once it ends."""
    pod, temporary = tmp_path / "pod", tmp_path / "tmp"
    pod.mkdir()
    temporary.mkdir()
    (pod / "counter_4242.db").write_bytes(b"\0" * 16)
    env = {**GOOD, "REDIS_URL": redis_server.url, "PROMETHEUS_MULTIPROC_DIR": str(pod), "TMPDIR": str(temporary)}
    result = relay("worker", "--burst", env=env)
    assert result.returncode == 0, result.stderr
    assert (pod / "counter_4242.db").read_bytes() == b"\0" * 16
    assert list(temporary.iterdir()) == []
