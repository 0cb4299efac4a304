"""No network at run time: a run (federation, membership attack, report) with every connection beyond
this machine refused succeeds, and nothing of fedsim, Flower or Ray's workers asks for one (Flower's
telemetry did, until fedsim turned it off). Every Python process of the run (the driver, Ray's
workers and its dashboard, which inherit PYTHONPATH) loads an audit hook from a sitecustomize module
that refuses TCP connections, datagrams and name lookups aimed off the machine and logs each one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_scenario

pytestmark = pytest.mark.e2e

GUARD = '''
import ipaddress, os, socket, sys

_LOG, _OWN = os.environ["NET_GUARD_LOG"], set(os.environ["NET_GUARD_OWN"].split(","))
_NAMES = {None, "", "localhost", socket.gethostname()}


def _local(host):
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return host in _NAMES
    return ip.is_loopback or ip.is_unspecified or str(ip) in _OWN


def _refuse(what):
    with open(_LOG, "a") as log:
        log.write(f"{what} from {' '.join(sys.argv[:1])}\\n")
    raise ConnectionRefusedError(f"no network at run time: {what}")


def _hook(event, args):
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            if sock.type == socket.SOCK_STREAM:  # a UDP connect sends nothing (Ray uses one to learn its IP)
                _refuse(f"connect {address!r}")
    elif event in ("socket.sendto", "socket.sendmsg") and len(args) > 1 and isinstance(args[1], tuple):
        if not _local(args[1][0]):
            _refuse(f"{event} {args[1]!r}")
    elif event == "socket.getaddrinfo" and not _local(args[0]):
        try:
            ipaddress.ip_address(str(args[0]))  # a numeric address needs no lookup: its connect is checked
        except ValueError:
            _refuse(f"getaddrinfo {args[0]!r}")


sys.addaudithook(_hook)
'''


def _own_addresses() -> set[str]:
    try:
        return set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        return set()


def test_a_run_needs_no_network(tmp_path: Path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "refused.log"
    raw = tiny_scenario(membership={"eval_size": 4, "aux_samples": 4, "targets": ["global_model"]},
                        attacks=[{"name": "mia_loss_threshold"}])
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "NET_GUARD_LOG": str(log), "NET_GUARD_OWN": ",".join(_own_addresses()),
           "PYTHONPATH": os.pathsep.join([str(guard), str(REPO), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('198.51.100.1', 80), 2)"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert "no network at run time" in check.stderr  # the guard is in force in a fresh interpreter
    log.unlink()
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", str(scenario), "--out", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    asked = log.read_text().splitlines() if log.exists() else []
    # the one request fedsim cannot switch off: Ray's dashboard asks cloud metadata servers which cloud
    # it is on, whether usage statistics are on or not (fedsim turns them off, and Flower's telemetry)
    ray_probe = [a for a in asked if a.endswith("ray/dashboard/dashboard.py")
                 and ("169.254.169.254" in a or "metadata.google.internal" in a)]
    assert [a for a in asked if a not in ray_probe] == []
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["membership"][0]["status"] == "ok"
    assert (run_dir / "report.html").is_file()
