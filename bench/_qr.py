"""Query/retrieve benchmark plumbing shared by bench/query.py and bench/retrieve.py.

Both targets must let the benchmark's AE query and retrieve: ours through `flask peers add`,
Orthanc through its DicomModalities (its configuration is written by _common.orthanc_config,
which we extend here before Orthanc starts).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import _common
from _common import BENCH_AE, LOCALHOST, REPO, SERVERS, Server, archivage_env, dcmtk_env, dcmtk_tool, flask_command

OURS = "archivage"
ORTHANC = "orthanc"

# Peers the target must know: AE title -> (host, port); filled before a target starts.
_PEERS: dict[str, tuple[str, int]] = {}
_orthanc_config = _common.orthanc_config


def _orthanc_config_with_peers(workdir: Path, dicom_port: int, http_port: int) -> dict[str, object]:
    config = _orthanc_config(workdir, dicom_port, http_port)
    modalities = {BENCH_AE: [BENCH_AE, LOCALHOST, 104]}
    modalities.update({ae: [ae, host, port] for ae, (host, port) in _PEERS.items()})
    config["DicomModalities"] = modalities
    config["DicomAlwaysAllowFind"] = True
    config["DicomAlwaysAllowGet"] = True
    config["DicomAlwaysAllowMove"] = True
    return config


_common.orthanc_config = _orthanc_config_with_peers


@contextmanager
def target_server(target: str, workdir: Path, peers: dict[str, tuple[str, int]]) -> Iterator[Server]:
    """Start *target* on an empty store, knowing the benchmark's AE and *peers*."""
    _PEERS.clear()
    _PEERS.update(peers)
    with SERVERS[target](workdir) as server:
        if target == OURS:
            env = archivage_env(workdir / "instance", server.port)
            for ae, (host, port) in {BENCH_AE: (LOCALHOST, 104), **peers}.items():
                subprocess.run(flask_command("peers", "add", ae, host, str(port)), cwd=REPO, env=env, check=True,
                               capture_output=True, timeout=120)
        yield server


@dataclass(frozen=True)
class Timed:
    elapsed_s: float
    result: subprocess.CompletedProcess[str]


def run_tool(name: str, args: Sequence[str], *, timeout_s: float) -> Timed:
    started = time.perf_counter()
    result = subprocess.run([dcmtk_tool(name), *args], env=dcmtk_env(), stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, encoding="utf-8", errors="replace", timeout=timeout_s)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return Timed(elapsed, result)


def scu_args(server: Server) -> list[str]:
    return ["-aet", BENCH_AE, "-aec", server.ae_title, "-to", "30", "-ta", "30", "-td", "600"]


@contextmanager
def discarding_storescp(workdir: Path, port: int) -> Iterator[Server]:
    """DCMTK storescp --ignore on *port* (a fresh one per measurement: one that aborted cannot skew the next)."""
    with _common.running_server(
        "storescp",
        [dcmtk_tool("storescp"), "--ignore", "-aet", "BENCHDEST", str(port)],
        port=port,
        ae_title="BENCHDEST",
        workdir=workdir,
        env=dcmtk_env(),
    ) as server:
        yield server
