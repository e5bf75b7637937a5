"""Retrieve benchmark: C-MOVE and C-GET throughput of the archive, vs a bare pynetdicom sender and Orthanc.

Usage: python bench/retrieve.py [--vs-orthanc] [--ct 200] [--ten 20] [--repeat 3] [--memory-gb 2]

Sets: one CT study of --ct images and ten CT studies of --ten images each (512x512x16,
_common's generator). Each target is loaded with storescu, then: movescu of one study and of the
ten (one request, a UID list) to a discarding DCMTK storescp (--ignore) registered as a peer;
getscu --ignore of the same. The baseline is a bare pynetdicom C-STORE sender (one association,
TCP_NODELAY, no DUL idle sleep, each file read with dcmread) to the same storescp: pynetdicom is
the ceiling of our retrieval. Medians of --repeat runs, in instances/s.

--memory-gb N (alone with --memory-only): a study of N GB in objects of --object-mb MiB is stored
in our server, its peak RSS reset (/proc/PID/clear_refs), then the study is retrieved by C-MOVE
(to the discarding storescp) and by C-GET (getscu --ignore): the peak RSS of the `archive serve`
process during retrieval is printed (target < 200 MB).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage
from pydicom.uid import ExplicitVRLittleEndian

from _common import LOCALHOST, ImageSetSpec, PeakRss, free_port, generate_image_set, process_tree, store
from _qr import ORTHANC, OURS, discarding_storescp, run_tool, scu_args, target_server

DEST_AE = "BENCHDEST"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs-orthanc", action="store_true")
    parser.add_argument("--ct", type=int, default=200, help="images of the one-study set (default 200)")
    parser.add_argument("--ten", type=int, default=20, help="images of each of the ten studies (default 20)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--memory-gb", type=float, default=0.0, help="peak memory while retrieving a study this large")
    parser.add_argument("--object-mb", type=int, default=64, help="size of each object of the --memory-gb study")
    parser.add_argument("--memory-only", action="store_true")
    return parser.parse_args(argv)


def bare_sender(files: Sequence[Path], port: int) -> float:
    """Seconds for pynetdicom to C-STORE *files* over one association."""

    def tune(event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        event.assoc.dul._run_loop_delay = 0.0

    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    started = time.perf_counter()
    assoc = ae.associate(LOCALHOST, port, ae_title="ANY", max_pdu=0, evt_handlers=[(evt.EVT_CONN_OPEN, tune)])
    if not assoc.is_established:
        raise RuntimeError("bare sender: association refused")
    for path in files:
        status = assoc.send_c_store(dcmread(path)).get("Status")
        if status != 0:
            raise RuntimeError(f"bare sender: C-STORE of {path.name} answered {status} (None: no answer, aborted)")
    assoc.release()
    return time.perf_counter() - started


def uid_list(sets) -> str:
    return "\\".join(str(dcmread(s.files[0], stop_before_pixels=True).StudyInstanceUID) for s in sets)


@contextmanager
def _tails_on_failure(*servers):
    try:
        yield
    except RuntimeError:
        for server in servers:
            print(f"--- {server.name} log (tail) ---\n{server.log_tail(40)}", file=sys.stderr)
        raise


# On this machine a DCMTK storescp receiving from pynetdicom (our C-MOVE, and the bare sender alike)
# now and then sees its connection drop mid-run ("Association Aborted"); such a run is repeated (up to
# ATTEMPTS times) and counted, so that the figures are not those of the failure.
RETRIES = {"count": 0}
ATTEMPTS = 4


def _with_retry(run):
    for attempt in range(ATTEMPTS):
        try:
            return run()
        except RuntimeError as exc:
            if attempt == ATTEMPTS - 1:
                raise
            RETRIES["count"] += 1
            print(f"  (run failed, repeated: {str(exc).splitlines()[0]})", flush=True)


def _move(server, workdir: Path, dest_port: int, keys: list[str], timeout_s: float):
    with discarding_storescp(workdir, dest_port) as dest, _tails_on_failure(server, dest):
        return run_tool("movescu", [*scu_args(server), "-S", "-aem", DEST_AE, *keys, LOCALHOST, str(server.port)],
                        timeout_s=timeout_s)


def _bare(files, root: Path, dest_port: int) -> float:
    with tempfile.TemporaryDirectory(prefix="dest-", dir=root) as dest_dir:
        with discarding_storescp(Path(dest_dir), dest_port):
            return len(files) / bare_sender(files, dest_port)


def measure(target: str, one, ten: list, args, root: Path, dest_port: int) -> dict[str, float]:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix=f"{target}-", dir=root) as tmp:
        workdir = Path(tmp)
        with target_server(target, workdir, {DEST_AE: (LOCALHOST, dest_port)}) as server:
            files = [*one.files, *(f for s in ten for f in s.files)]
            store(server, files, associations=2, workdir=workdir, timeout_s=args.timeout)
            cases = {"1 study": ([one], len(one.files)), "10 studies": (ten, sum(len(s.files) for s in ten))}
            for _ in range(args.repeat):
                for label, (sets, count) in cases.items():
                    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid_list(sets)}"]
                    move = _with_retry(lambda: _move(server, workdir, dest_port, keys, args.timeout))
                    results.setdefault(f"C-MOVE {label}", []).append(count / move.elapsed_s)
                    get = run_tool("getscu", [*scu_args(server), "-S", "--ignore", *keys, LOCALHOST, str(server.port)],
                                   timeout_s=args.timeout)
                    results.setdefault(f"C-GET {label}", []).append(count / get.elapsed_s)
    medians = {k: statistics.median(v) for k, v in results.items()}
    for key, value in medians.items():
        print(f"{target:<10} {key:<18} {value:7.1f} inst/s", flush=True)
    return medians


def _reset_peak_rss(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def memory(args, root: Path) -> None:
    """Peak RSS of our server while it sends a study of --memory-gb GB (see the module docstring)."""
    columns = max(1, args.object_mb * (1 << 20) // (2 * 4096))
    count = max(1, round(args.memory_gb * 1024 / args.object_mb))
    big = generate_image_set(ImageSetSpec("large 4096 rows", count, 4096, columns, seed=90), root / "data" / "large")
    total = sum(f.stat().st_size for f in big.files)
    dest_port = free_port()
    with tempfile.TemporaryDirectory(prefix="memory-", dir=root) as tmp:
        workdir = Path(tmp)
        with target_server(OURS, workdir, {DEST_AE: (LOCALHOST, dest_port)}) as server:
            store(server, big.files, associations=1, workdir=workdir, timeout_s=args.timeout)
            keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid_list([big])}"]
            for f in big.files:
                f.unlink()  # what the page cache holds of them is the server's to read
            pids = process_tree(server.process.pid)
            _reset_peak_rss(pids)
            with PeakRss(server.process.pid) as peak:
                move = _move(server, workdir, dest_port, keys, args.timeout)
                get = run_tool("getscu", [*scu_args(server), "-S", "--ignore", *keys, LOCALHOST, str(server.port)],
                               timeout_s=args.timeout)
    print(f"memory: study of {count} objects, {total / 1e9:.2f} GB: C-MOVE {total / move.elapsed_s / 1e6:.0f} MB/s,"
          f" C-GET {total / get.elapsed_s / 1e6:.0f} MB/s; archive serve RSS {peak.startup_bytes / 1e6:.0f} MB before,"
          f" peak {peak.bytes / 1e6:.0f} MB while retrieving (target < 200 MB)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_only:
        with tempfile.TemporaryDirectory(prefix="archivage-bench-m-", dir=args.workdir) as tmp:
            memory(args, Path(tmp))
        return 0
    with tempfile.TemporaryDirectory(prefix="archivage-bench-r-", dir=args.workdir) as tmp:
        root = Path(tmp)
        one = generate_image_set(ImageSetSpec("CT 512x512x16", args.ct, 512, 512, seed=11), root / "data" / "one")
        ten = [
            generate_image_set(ImageSetSpec("CT 512x512x16", args.ten, 512, 512, seed=20 + n), root / "data" / f"t{n}")
            for n in range(10)
        ]
        print(f"one study of {args.ct} CT images; ten studies of {args.ten}; runs per point: {args.repeat} (median)")
        dest_port = free_port()
        rates = []
        for _ in range(args.repeat):
            rates.append(_with_retry(lambda: _bare(one.files, root, dest_port)))
        bare = statistics.median(rates)
        print(f"bare pynetdicom sender: {bare:.1f} inst/s", flush=True)
        targets = [OURS, *([ORTHANC] if args.vs_orthanc else [])]
        results = {t: measure(t, one, ten, args, root, dest_port) for t in targets}
        if args.memory_gb:
            memory(args, root)
    print(f"\nruns repeated after a dropped connection: {RETRIES['count']}")
    print("Summary (instances/s; ratio to the bare pynetdicom sender, target >= 0.8)")
    for key in results[OURS]:
        line = f"{key:<18} ours {results[OURS][key]:7.1f}  x{results[OURS][key] / bare:.2f} bare"
        if ORTHANC in results:
            ratio = results[OURS][key] / results[ORTHANC][key]
            line += f" | Orthanc {results[ORTHANC][key]:7.1f}  ours/Orthanc {ratio:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
