"""DICOMweb benchmark: QIDO-RS study searches and WADO-RS retrieval, vs Orthanc's DICOMweb plugin.

Usage: python bench/dicomweb.py [--ct 200] [--studies 1000] [--repeat 9] [--single-repeat 200] [--workdir DIR]

Both systems get the same files by DCMTK storescu: one CT study of --ct images (512x512x16,
_common's generator) and --studies one-image studies (64x64) of distinct patients. Then, over
HTTP keep-alive from one client (``requests``) on loopback:

- QIDO-RS ``/studies`` by StudyInstanceUID, by PatientID, by PatientName prefix PatientID prefix and
  PatientName prefix (a tenth of the patients match each) and by a StudyDate range (all): the median milliseconds of --repeat calls
  (--single-repeat for the two single-match searches, a few milliseconds each);
- WADO-RS ``/studies/{CT}`` (``multipart/related; type="application/dicom"``, stored syntax): the
  median instances/s of --repeat retrievals, the body read and counted.

Ours is ``flask --app wsgi web`` (waitress, 8 threads) on an instance ``archive serve`` filled;
Orthanc is Debian's 1.10.1 with ``libOrthancDicomWeb.so``. Both run at once and take turns call by
call, so a change of the machine's load falls on both alike. Ratios are ours / Orthanc's (latency:
lower is better; instances/s: higher is better).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

import _common
from _common import (
    LOCALHOST, REPO, ImageSetSpec, archivage_env, archivage_server, flask_command, free_port, free_ports,
    generate_image_set, orthanc_binary, running_server, store,
)

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=200, help="images of the CT study retrieved (default 200)")
    parser.add_argument("--studies", type=int, default=1000, help="one-image studies searched (default 1000)")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--single-repeat", type=int, default=200,
                        help="calls of each single-match QIDO per system (a few ms each: many, for a stable median)")
    parser.add_argument("--workdir", type=Path)
    return parser.parse_args(argv)


def small_studies(count: int, directory: Path) -> list[Path]:
    """*count* one-image studies of distinct patients (names ``NAMEnnnn^Given``, IDs ``Pnnnnn``)."""
    template = generate_image_set(ImageSetSpec("small", 1, 64, 64, seed=7), directory / "template").files[0]
    ds = dcmread(template)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        ds.PatientName = f"NAME{index:04d}^Given"
        ds.PatientID = f"P{index:05d}"
        ds.StudyDate = f"2024{1 + index % 12:02d}{1 + index % 28:02d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = directory / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


@contextmanager
def ours(workdir: Path, files: list[Path]) -> Iterator[tuple[str, dict[str, str]]]:
    """Our archive filled with *files*, then our web process: (DICOMweb base URL, auth headers)."""
    with archivage_server(workdir) as server:
        store(server, files, associations=2, workdir=workdir, timeout_s=1800)
        env = archivage_env(workdir / "instance", server.port)
        subprocess.run(flask_command("users", "create", "bench", "--role", "radiologist"), cwd=REPO, env=env,
                       check=True, capture_output=True, timeout=120)
        made = subprocess.run(flask_command("tokens", "create", "bench"), cwd=REPO, env=env, check=True,
                              capture_output=True, text=True, timeout=120)
        token = made.stdout.strip().splitlines()[-1]
        port = free_port()
        log = (workdir / "web.log").open("wb")
        web = subprocess.Popen(flask_command("web", "--host", LOCALHOST, "--port", str(port)), cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://{LOCALHOST}:{port}/dicom-web"
            _wait_http(base + "/studies?limit=1")
            yield base, {"Authorization": f"Bearer {token}"}
        finally:
            _common.stop_process(web)
            log.close()


@contextmanager
def orthanc(workdir: Path, files: list[Path]) -> Iterator[tuple[str, dict[str, str]]]:
    """Debian's Orthanc with its DICOMweb plugin, filled with *files*."""
    if not os.path.exists(PLUGIN):
        raise RuntimeError(f"{PLUGIN} missing (apt install orthanc-dicomweb)")
    dicom_port, http_port = free_ports(2)
    config = _common.orthanc_config(workdir, dicom_port, http_port)
    config.update(Plugins=[PLUGIN], DicomWeb={"Enable": True, "Root": "/dicom-web/"})
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    with running_server("orthanc", [orthanc_binary(), str(path)], port=dicom_port, ae_title=_common.ORTHANC_AE,
                        workdir=workdir, env=_common.dcmtk_env()) as server:
        store(server, files, associations=2, workdir=workdir, timeout_s=1800)
        base = f"http://{LOCALHOST}:{http_port}/dicom-web"
        _wait_http(base + "/studies?limit=1")
        yield base, {}


def qido_once(http: requests.Session, base: str, headers: dict[str, str], params: dict[str, str],
              expected: int) -> float:
    """Milliseconds of one ``GET /studies?params``; the answer must hold *expected* studies."""
    started = time.perf_counter()
    # Written out, not urlencoded: Orthanc's plugin 1.7 does not decode %2A and %5E (``*``, ``^``).
    query = "&".join(f"{key}={value}" for key, value in params.items())
    response = http.get(f"{base}/studies?{query}", headers={**headers, "Accept": "application/dicom+json"})
    answers = response.json() if response.status_code == 200 else []
    elapsed = (time.perf_counter() - started) * 1000
    if len(answers) != expected:
        raise RuntimeError(f"{base}: QIDO {params} answered {response.status_code} with {len(answers)} studies, "
                           f"not {expected}")
    return elapsed


def wado_once(http: requests.Session, base: str, headers: dict[str, str], study: str, count: int,
              stored_bytes: int) -> float:
    """Instances/s of one ``GET /studies/{study}``, the multipart body read to its end."""
    started = time.perf_counter()
    with http.get(f"{base}/studies/{study}", headers={**headers, "Accept": ACCEPT_DICOM}, stream=True) as r:
        r.raise_for_status()
        received = sum(len(chunk) for chunk in r.iter_content(1 << 20))
    elapsed = time.perf_counter() - started
    if received < stored_bytes:
        raise RuntimeError(f"WADO-RS answered {received} bytes, less than the {stored_bytes} stored")
    return count / elapsed


def interleaved(calls: dict[str, object], repeat: int) -> dict[str, float]:
    """Median of *repeat* calls of each system's function, the systems taking turns (the first one
    alternating), so that a change in the machine's load falls on both alike."""
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeat):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            samples[name].append(calls[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(systems: dict[str, tuple[str, dict[str, str]]], ct_files: list[Path], small_files: list[Path],
            study: str, repeat: int, single_repeat: int) -> dict[str, dict[str, float]]:
    """Every figure of both *systems* (name -> (base URL, headers)), their calls interleaved."""
    prefix_matches = sum(1 for i in range(len(small_files)) if f"{i:05d}".startswith("000"))
    sessions = {name: requests.Session() for name in systems}
    everything = len(small_files) + 1
    queries = [
        ("QIDO StudyInstanceUID (ms)", {"StudyInstanceUID": study}, 1, single_repeat),
        ("QIDO PatientID (ms)", {"PatientID": "P00042"}, 1, single_repeat),
        (f"QIDO PatientID=P000* ({prefix_matches}) (ms)", {"PatientID": "P000*"}, prefix_matches, repeat),
        (f"QIDO PatientName=NAME00* ({prefix_matches}) (ms)", {"PatientName": "NAME00*"}, prefix_matches, repeat),
        (f"QIDO StudyDate range (all {everything}) (ms)",
         {"StudyDate": "19000101-20991231", "limit": str(everything + 10)}, everything, repeat),
    ]
    if len(small_files) <= 42:
        queries.pop(1)
    figures: dict[str, dict[str, float]] = {}
    for label, params, expected, times in queries:
        figures[label] = interleaved({
            name: (lambda http=sessions[name], base=base, headers=headers:
                   qido_once(http, base, headers, params, expected))
            for name, (base, headers) in systems.items()}, times)
    stored = sum(p.stat().st_size for p in ct_files)
    figures["WADO-RS CT study (inst/s)"] = interleaved({
        name: (lambda http=sessions[name], base=base, headers=headers:
               wado_once(http, base, headers, study, len(ct_files), stored))
        for name, (base, headers) in systems.items()}, repeat)
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    socket.setdefaulttimeout(600)
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-", dir=args.workdir) as tmp, ExitStack() as stack:
        root = Path(tmp)
        ct = generate_image_set(ImageSetSpec("ct", args.ct, 512, 512), root / "ct")
        study = dcmread(ct.files[0], stop_before_pixels=True).StudyInstanceUID
        small = small_studies(args.studies, root / "small")
        systems = {}
        for name, target in (("archivage", ours), ("orthanc", orthanc)):
            (root / name).mkdir()
            systems[name] = stack.enter_context(target(root / name, list(ct.files) + small))
        load = os.getloadavg()[0]
        figures = measure(systems, list(ct.files), small, study, args.repeat, args.single_repeat)
        print(f"DICOMweb, {args.ct}-image CT + {args.studies} one-image studies, both systems up, calls interleaved; "
              f"median of {args.single_repeat} (single-match QIDO) or {args.repeat}; "
              f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
        print(f"{'measure':<44} {'archivage':>10} {'orthanc':>10} {'ratio':>7}")
        for key, value in figures.items():
            print(f"{key:<44} {value['archivage']:>10.1f} {value['orthanc']:>10.1f} "
                  f"{value['archivage'] / value['orthanc']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
