"""Pixel rendering: stored DICOM to PNG/JPEG with modality LUT, VOI LUT or window/level, and a render cache."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from archive_core.errors import ArchiveError

#: Window presets (centre, width) in Hounsfield units, the usual CT reading windows.
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "stroke": (35.0, 40.0),
    "subdural": (75.0, 215.0),
}

FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
MAX_SIZE = 2048


class RenderError(ArchiveError):
    """The object has no pixels we can show (a report, a frame that does not exist...)."""


@dataclass(frozen=True)
class RenderParams:
    """How to render one frame; ``size`` is the longest side in pixels (never upscaled beyond it)."""

    frame: int = 0
    window_center: float | None = None
    window_width: float | None = None
    preset: str | None = None
    size: int = 512
    fmt: str = "png"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise RenderError(f"unknown format {self.fmt!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise RenderError(f"unknown preset {self.preset!r}")
        if not 1 <= self.size <= MAX_SIZE:
            raise RenderError(f"size must be between 1 and {MAX_SIZE}")
        if self.frame < 0:
            raise RenderError("frame must be >= 0")
        if self.window_width is not None and self.window_width < 1:
            raise RenderError("window width must be >= 1")

    @property
    def window(self) -> tuple[float, float] | None:
        """The window asked for explicitly (manual values win over a preset), or None."""
        if self.window_center is not None and self.window_width is not None:
            return (float(self.window_center), float(self.window_width))
        if self.preset:
            return PRESETS[self.preset]
        return None

    @property
    def content_type(self) -> str:
        return FORMATS[self.fmt]

    def cache_tag(self) -> str:
        return (
            f"f{self.frame}-w{self.window}-s{self.size}-{self.fmt}-q{self.quality if self.fmt == 'jpeg' else 0}"
        )


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _first(value) -> float:
    """A window value may be multi-valued: the first pair is the default view."""
    if value is None:
        raise ValueError
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear VOI function (PS3.3 C.11.2.1.2.1) to 0..255."""
    width = max(width, 1.0)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    out = ((values - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5) * 255.0
    out = np.where(values <= low, 0.0, np.where(values > high, 255.0, out))
    return np.clip(out, 0, 255)


def dataset_window(ds: Dataset) -> tuple[float, float] | None:
    """The window centre/width the modality put in the dataset, if any."""
    try:
        return (_first(ds.get("WindowCenter")), _first(ds.get("WindowWidth")))
    except (ValueError, TypeError, IndexError):
        return None


def _frame_pixels(ds: Dataset, frame: int) -> np.ndarray:
    frames = number_of_frames(ds)
    if frame >= frames:
        raise RenderError(f"frame {frame} out of range (the object has {frames})")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise RenderError("the object has no pixel data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # pixel_array() decodes one frame only and converts YBR to RGB.
            return pixel_array(ds, index=frame if frames > 1 else None)
    except (ValueError, NotImplementedError, RuntimeError, AttributeError, KeyError) as exc:
        raise RenderError(f"cannot decode the pixel data: {exc}") from exc


def to_display(ds: Dataset, params: RenderParams = RenderParams()) -> np.ndarray:
    """The frame as 8-bit display values: (rows, cols) for grey, (rows, cols, 3) for colour."""
    arr = _frame_pixels(ds, params.frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        photometric = "RGB"
    if arr.ndim == 3 or int(ds.get("SamplesPerPixel", 1)) > 1:
        if arr.dtype != np.uint8:
            bits = int(ds.get("BitsStored", 8) or 8)
            arr = (arr.astype(np.float64) * (255.0 / (2**bits - 1))).clip(0, 255)
        return arr.astype(np.uint8)

    values = apply_modality_lut(arr, ds).astype(np.float64)
    window = params.window
    if window is None and "VOILUTSequence" in ds and dataset_window(ds) is None:
        lut_input = values.astype(np.int64) if np.all(np.mod(values, 1) == 0) else values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on float input; a LUT is indexed anyway
            voi = apply_voi_lut(lut_input, ds, index=0)
        lut_item = ds.VOILUTSequence[0]
        out_bits = int(lut_item.LUTDescriptor[2]) or 16
        display = voi.astype(np.float64) * (255.0 / (2**out_bits - 1))
    else:
        window = window or dataset_window(ds)
        if window is None:  # nothing says how to look at it: the full range of this frame
            low, high = float(values.min()), float(values.max())
            window = ((low + high + 1) / 2, max(high - low + 1, 1.0))
        display = window_linear(values, *window)
    display = np.clip(np.rint(display), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":  # low values are white
        display = 255 - display
    return display


def encode(display: np.ndarray, params: RenderParams) -> bytes:
    image = Image.fromarray(display)
    if max(image.size) > params.size:
        image.thumbnail((params.size, params.size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if params.fmt == "jpeg":
        image.save(buf, "JPEG", quality=params.quality)
    else:
        image.save(buf, "PNG", compress_level=1)  # speed over bytes: a viewer is waiting
    return buf.getvalue()


def render(ds: Dataset, params: RenderParams = RenderParams()) -> bytes:
    """Render one frame of *ds* as PNG or JPEG bytes."""
    return encode(to_display(ds, params), params)


class RenderCache:
    """Rendered images as files under *root*, keyed by SOP Instance UID, version and parameters, bounded in size.

    One folder per instance (so a purge can forget an instance's renders); the *version* (the stored
    object's checksum) keeps a replaced object from being served from an older render. Eviction drops
    the least recently written files once the total exceeds *max_bytes*.
    """

    def __init__(self, root: Path, max_bytes: int = 512 * 1024**2) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._approx_bytes: int | None = None

    def _folder(self, sop_instance_uid: str) -> Path:
        digest = hashlib.sha256(sop_instance_uid.encode()).hexdigest()
        return self.root / digest[:2] / digest

    def _path(self, sop_instance_uid: str, params: RenderParams, version: str) -> Path:
        tag = hashlib.sha256(f"{version}|{params.cache_tag()}".encode()).hexdigest()[:32]
        return self._folder(sop_instance_uid) / f"{tag}.{params.fmt}"

    def get(self, sop_instance_uid: str, params: RenderParams, version: str = "") -> bytes | None:
        try:
            return self._path(sop_instance_uid, params, version).read_bytes()
        except FileNotFoundError:
            return None

    def forget(self, sop_instance_uid: str) -> None:
        """Drop every render of an instance (it was purged)."""
        shutil.rmtree(self._folder(sop_instance_uid), ignore_errors=True)

    def put(self, sop_instance_uid: str, params: RenderParams, data: bytes, version: str = "") -> None:
        path = self._path(sop_instance_uid, params, version)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # patient images: the service user's only
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)  # readers see a whole file or none (a cache needs no fsync)
        with self._lock:
            if self._approx_bytes is None:
                self._approx_bytes = self.total_bytes()
            else:
                self._approx_bytes += len(data)
            if self._approx_bytes > self.max_bytes:
                self._approx_bytes = self._evict()

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*/*") if p.is_file())

    def _evict(self) -> int:
        files = []
        for p in self.root.glob("*/*/*"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(size for _m, size, _p in files)
        target = int(self.max_bytes * 0.8)
        for _mtime, size, p in files:
            if total <= target:
                break
            p.unlink(missing_ok=True)
            total -= size
        return total


class Renderer:
    """Renders stored objects, read by *reader* (SOP Instance UID -> Dataset), through the cache."""

    def __init__(self, reader: Callable[[str], Dataset], cache: RenderCache) -> None:
        self.reader = reader
        self.cache = cache

    def render(self, sop_instance_uid: str, params: RenderParams, *, version: str = "") -> bytes:
        cached = self.cache.get(sop_instance_uid, params, version)
        if cached is not None:
            return cached
        data = render(self.reader(sop_instance_uid), params)
        self.cache.put(sop_instance_uid, params, data, version)
        return data


def parse_dataset(data: bytes) -> Dataset:
    """A stored Part 10 file, read fully (pixel data included)."""
    from pydicom import dcmread

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data), force=True)
