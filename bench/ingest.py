"""Ingest benchmark: C-STORE throughput and peak memory of the archive, optionally against Orthanc.

Usage: python bench/ingest.py [--vs-orthanc] [--ct N] [--small N] [--concurrency 1,2,4] [--repeat N] [--workers N]
       python bench/ingest.py --nodes 2 [--storage s3|both] [--ct N] [--small N] [--concurrency 2] [--repeat N]
       python bench/ingest.py --storage both [--database postgresql]   # S3 (moto) vs filesystem, one node

``--nodes N``: one node, then N ``archive serve`` nodes (each its own instance folder and journal) on one
PostgreSQL and one S3-compatible server (moto, started here), the associations spread over the nodes;
both on the same engines in the same run. ``--storage both`` adds one node on a local folder: the cost
of the object store per stored instance. moto is a test double, not a production store.

Every measured run gets a fresh server on an empty instance; the data sets are generated once.
Sending is DCMTK storescu (TCP_NODELAY=1), one association per storescu process. Besides the
throughput, the server's CPU time per instance (user + system, every process of the server) is
printed: on a shared machine it moves much less than the throughput.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

# Run as a script: its folder is first on sys.path, which is how _common is found.
from _common import (
    MB,
    REPO,
    SERVERS,
    ImageSet,
    ImageSetSpec,
    PeakRss,
    archivage_server,
    cpu_seconds,
    generate_image_set,
    orthanc_binary,
    postgres_server,
    run_dcmtk,
    s3_server,
    store,
)

OURS = "archivage"
ORTHANC = "orthanc"
# Minimum ours/Orthanc instances-per-second ratio, per (set, associations): issue 13's targets.
TARGET_RATIO = {("ct", 1): 0.80, ("ct", 4): 1.0, ("small", 1): 0.80, ("small", 4): 0.80}


@dataclass(frozen=True)
class Measurement:
    target: str
    set_key: str
    associations: int
    elapsed_s: float
    instances: int
    total_bytes: int
    peak_rss_bytes: int
    startup_rss_bytes: int
    cpu_s: float = 0.0  # the server's CPU time (user + system, all its processes) for the run

    @property
    def cpu_ms_per_instance(self) -> float:
        return 1000 * self.cpu_s / self.instances

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.elapsed_s

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / MB / self.elapsed_s


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs-orthanc", action="store_true", help="also measure Debian's Orthanc")
    parser.add_argument("--ct", type=int, default=200, help="CT instances, 512x512x16 (default 200)")
    parser.add_argument("--small", type=int, default=500, help="small instances, 64x64x16 (default 500)")
    parser.add_argument("--concurrency", type=_int_list, default=[1], help="associations in parallel, e.g. 1,2,4")
    parser.add_argument("--repeat", type=_positive_int, default=3, help="runs per point, median kept (default 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per send")
    parser.add_argument("--workdir", type=Path, help="where temporary data goes (default: $TMPDIR)")
    parser.add_argument("--workers", type=_positive_int, default=1,
                        help="our SCP worker processes (DICOM_WORKERS, default 1)")
    parser.add_argument("--nodes", type=_positive_int, default=1,
                        help="N > 1: one node, then N nodes on one PostgreSQL + one S3 server (moto)")
    parser.add_argument("--storage", choices=["filesystem", "s3", "both"],
                        help="our store: a local folder, S3 (moto), or each"
                             " (default: s3 with --nodes, else filesystem)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"],
                        help="our index (default: postgresql with --nodes or an S3 store, else sqlite)")
    # Development and baselines: measure Orthanc, or DCMTK's storescp --ignore, in our place.
    parser.add_argument("--target", choices=sorted(SERVERS), default=OURS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.storage is None:
        args.storage = "s3" if args.nodes > 1 else "filesystem"
    if args.database is None:
        args.database = "postgresql" if args.nodes > 1 or args.storage != "filesystem" else "sqlite"
    if args.nodes > 1 and (args.storage == "filesystem" or args.database == "sqlite"):
        parser.error("several nodes share PostgreSQL and an S3 store (a local folder belongs to one node)")
    if args.nodes > 1 and (args.vs_orthanc or args.target != OURS):
        parser.error("--nodes measures our archive only")
    return args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _int_list(text: str) -> list[int]:
    values = [_positive_int(part) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 1,2,4")
    return values


def image_set_specs(args: argparse.Namespace) -> dict[str, ImageSetSpec]:
    specs = {
        "ct": ImageSetSpec("CT 512x512x16", args.ct, 512, 512, seed=1),
        "small": ImageSetSpec("small 64x64x16", args.small, 64, 64, seed=2),
    }
    return {key: spec for key, spec in specs.items() if spec.count > 0}


def measure(
    target: str, set_key: str, image_set: ImageSet, associations: int, *, root: Path, timeout_s: float,
    workers: int = 1,
) -> Measurement:
    """One run: fresh server and empty store, send the set, stop the server."""
    with tempfile.TemporaryDirectory(prefix=f"{target}-", dir=root) as tmp:
        workdir = Path(tmp)
        options = {"workers": workers} if target == OURS else {}
        with SERVERS[target](workdir, **options) as server, PeakRss(server.process.pid) as rss:
            cpu_before = cpu_seconds(server.process.pid)
            elapsed_s = store(server, image_set.files, associations=associations, workdir=workdir, timeout_s=timeout_s)
            cpu_s = cpu_seconds(server.process.pid) - cpu_before
        return Measurement(
            target,
            set_key,
            associations,
            elapsed_s,
            len(image_set.files),
            image_set.total_bytes,
            rss.bytes,
            rss.startup_bytes,
            cpu_s,
        )


def median_run(runs: Sequence[Measurement]) -> Measurement:
    by_speed = sorted(runs, key=lambda run: run.elapsed_s)
    median = by_speed[(len(by_speed) - 1) // 2]
    peak = max(run.peak_rss_bytes for run in runs)
    return replace(median, peak_rss_bytes=peak)


def format_row(run: Measurement, label: str) -> str:
    return (
        f"{label:<15} {run.target:<10} x{run.associations:<2}"
        f" {run.instances_per_s:8.1f} inst/s {run.mb_per_s:7.1f} MB/s"
        f" {run.elapsed_s:7.2f} s  peak RSS {run.peak_rss_bytes / MB:6.0f} MB"
        f"  CPU {run.cpu_ms_per_instance:5.2f} ms/inst"
    )


def format_comparison(ours: Measurement, theirs: Measurement, label: str) -> str:
    ratio = ours.instances_per_s / theirs.instances_per_s
    single = ours.associations == 1
    name = label if single else f"{label} x{ours.associations} assoc"
    goal = TARGET_RATIO.get((ours.set_key, ours.associations))
    target = f" (target >= {goal:.2f})" if goal else ""
    return (
        f"{name:<24} {ours.target} {ours.instances_per_s:.1f} inst/s {ours.mb_per_s:.1f} MB/s"
        f" CPU {ours.cpu_ms_per_instance:.2f} ms/inst"
        f" | {theirs.target} {theirs.instances_per_s:.1f} inst/s {theirs.mb_per_s:.1f} MB/s"
        f" CPU {theirs.cpu_ms_per_instance:.2f} ms/inst"
        f" | ratio {ratio:.2f}{target}"
    )


def format_memory(ours: Measurement, theirs: Measurement | None, label: str) -> str:
    def peak(run: Measurement) -> str:
        return f"{run.target} {run.peak_rss_bytes / MB:.0f} MB (at start {run.startup_rss_bytes / MB:.0f} MB)"

    return f"peak RSS ingesting {label}: {peak(ours)}" + (f" | {peak(theirs)}" if theirs else "")


def describe_tools(with_orthanc: bool) -> str:
    tools = [f"{os.cpu_count()} CPUs", run_dcmtk("storescu", ["--version"], timeout_s=10).stdout.strip().split("\n")[0]]
    if with_orthanc:
        orthanc = subprocess.run([orthanc_binary(), "--version"], capture_output=True, text=True, timeout=10)
        tools.append(f"Orthanc {orthanc.stdout.split(maxsplit=2)[1]}")  # its first word is argv[0]
    return "; ".join(tool.strip("$ ") for tool in tools)


Results = dict[tuple[str, str, int], Measurement]


def run_all(args: argparse.Namespace, targets: Sequence[str], sets: dict[str, ImageSet], root: Path) -> Results:
    """Measure every (set, associations, target) point ``args.repeat`` times; keep the medians."""
    results: Results = {}
    for key, image_set in sets.items():
        for associations in args.concurrency:
            runs: dict[str, list[Measurement]] = {target: [] for target in targets}
            for _ in range(args.repeat):
                for target in targets:  # interleaved, so drift affects every target alike
                    run = measure(target, key, image_set, associations, root=root, timeout_s=args.timeout,
                                  workers=args.workers)
                    print(format_row(run, image_set.spec.label), flush=True)
                    runs[target].append(run)
            for target in targets:
                results[target, key, associations] = median_run(runs[target])
    return results


def print_summary(results: Results, ours: str, sets: dict[str, ImageSet], concurrency: Sequence[int]) -> None:
    print("\nSummary (median per point; ratio = instances/s ours / Orthanc's)")
    for key, image_set in sets.items():
        label = image_set.spec.label
        for associations in concurrency:
            mine = results[ours, key, associations]
            theirs = results.get((ORTHANC, key, associations)) if ours != ORTHANC else None
            print(format_comparison(mine, theirs, label) if theirs else format_row(mine, label))
        if 1 in concurrency:
            theirs_1 = results.get((ORTHANC, key, 1)) if ours != ORTHANC else None
            print(format_memory(results[ours, key, 1], theirs_1, label))


def run_benchmark(args: argparse.Namespace, root: Path) -> None:
    targets = list(dict.fromkeys([args.target, *([ORTHANC] if args.vs_orthanc else [])]))
    print(describe_tools(ORTHANC in targets))
    sets = {key: generate_image_set(spec, root / "data" / key) for key, spec in image_set_specs(args).items()}
    for image_set in sets.values():
        print(f"{image_set.spec.label}: {len(image_set.files)} files, {image_set.total_bytes / MB:.1f} MB")
    print(f"runs per point: {args.repeat} (median kept); fresh server and empty store per run;"
          f" our SCP worker processes: {args.workers}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    results = run_all(args, targets, sets, root)
    print_summary(results, args.target, sets, args.concurrency)
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


# --- several nodes, shared engines ---------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What one measured run starts: *nodes* ``archive serve`` processes on *storage*, one *database*."""

    nodes: int
    storage: str  # "filesystem" | "s3"
    database: str  # "sqlite" | "postgresql"

    @property
    def label(self) -> str:
        store = "S3" if self.storage == "s3" else "fs"
        return f"{self.nodes} node{'s' if self.nodes > 1 else ''} {self.database}+{store}"


def deployments(args: argparse.Namespace) -> list[Deployment]:
    storages = ["s3", "filesystem"] if args.storage == "both" else [args.storage]
    found = [Deployment(1, storage, args.database) for storage in storages]
    if args.nodes > 1:
        found.insert(1, Deployment(args.nodes, "s3", args.database))
    return found


def measure_deployment(
    deployment: Deployment, set_key: str, image_set: ImageSet, associations: int, *, root: Path, engines: dict,
    timeout_s: float, workers: int = 1,
) -> Measurement:
    """One run: fresh database and bucket, *deployment.nodes* servers, the set spread over them."""
    import uuid

    with tempfile.TemporaryDirectory(prefix="nodes-", dir=root) as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        settings: dict[str, str] = {}
        if deployment.database == "postgresql":
            engines["postgresql"].reset()
            settings["ARCHIVAGE_DATABASE_URL"] = engines["postgresql"].url
        if deployment.storage == "s3":
            settings |= engines["s3"].settings(engines["s3"].create_bucket(f"bench-{uuid.uuid4().hex[:12]}"))
        servers = []
        for n in range(deployment.nodes):
            node_dir = workdir / f"node-{n}"
            node_dir.mkdir()
            servers.append(stack.enter_context(archivage_server(
                node_dir, workers=workers, settings=settings, migrate=n == 0, name=f"archivage-node-{n}")))
        rss = [stack.enter_context(PeakRss(server.process.pid)) for server in servers]
        cpu_before = sum(cpu_seconds(server.process.pid) for server in servers)
        elapsed_s = store(servers, image_set.files, associations=max(associations, deployment.nodes),
                          workdir=workdir, timeout_s=timeout_s)
        cpu_s = sum(cpu_seconds(server.process.pid) for server in servers) - cpu_before
    return Measurement(deployment.label, set_key, max(associations, deployment.nodes), elapsed_s,
                       len(image_set.files), image_set.total_bytes, sum(r.bytes for r in rss),
                       sum(r.startup_bytes for r in rss), cpu_s)


def run_deployments(args: argparse.Namespace, root: Path) -> None:
    """``--nodes N`` / ``--storage`` / ``--database``: our archive on shared engines, one node against N."""
    print(describe_tools(False))
    plan = deployments(args)
    sets = {key: generate_image_set(spec, root / "data" / key) for key, spec in image_set_specs(args).items()}
    for image_set in sets.values():
        print(f"{image_set.spec.label}: {len(image_set.files)} files, {image_set.total_bytes / MB:.1f} MB")
    print(f"deployments: {', '.join(d.label for d in plan)}; runs per point: {args.repeat} (median kept);"
          f" fresh database and bucket per run; CPU = our nodes only (not PostgreSQL, not moto);"
          f" load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    with ExitStack() as stack:
        engines = {}
        if any(d.database == "postgresql" for d in plan):
            engines["postgresql"] = stack.enter_context(postgres_server())
        if any(d.storage == "s3" for d in plan):
            engines["s3"] = stack.enter_context(s3_server(root))
        results: dict[tuple[str, str, int], Measurement] = {}
        for key, image_set in sets.items():
            for associations in args.concurrency:
                runs: dict[Deployment, list[Measurement]] = {d: [] for d in plan}
                for _ in range(args.repeat):
                    for deployment in plan:  # interleaved, so drift affects every deployment alike
                        run = measure_deployment(deployment, key, image_set, associations, root=root,
                                                 engines=engines, timeout_s=args.timeout, workers=args.workers)
                        print(format_row(run, image_set.spec.label), flush=True)
                        runs[deployment].append(run)
                for deployment in plan:
                    results[deployment.label, key, associations] = median_run(runs[deployment])
    print("\nSummary (median per point)")
    for key, image_set in sets.items():
        for associations in args.concurrency:
            first = results[plan[0].label, key, associations]
            for deployment in plan:
                run = results[deployment.label, key, associations]
                print(f"{format_row(run, image_set.spec.label)}  x{run.instances_per_s / first.instances_per_s:.2f}"
                      f" vs {plan[0].label}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds the context managers, which stop every server and storescu we started.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.target == OURS and not (REPO / "wsgi.py").exists():
        print(f"{REPO / 'wsgi.py'} does not exist yet; try --target storescp", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archivage-bench-", dir=args.workdir) as tmp:
        try:
            if args.nodes > 1 or args.storage != "filesystem" or args.database != "sqlite":
                run_deployments(args, Path(tmp))
            else:
                run_benchmark(args, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
