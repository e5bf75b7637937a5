"""Converting a stored object for a receiver that does not take its stored transfer syntax.

An instance the receiver cannot take in its stored syntax is converted (:func:`convert`) to
explicit, else implicit, VR little endian, keeping every UID and, for a lossy stored syntax, Lossy
Image Compression with its ratio and method (as ``dcmdjpeg`` does).
"""

from __future__ import annotations

import warnings
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Lossy transfer syntaxes and the Lossy Image Compression Method (0028,2114) each stands for.
LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 (lossy unless its codestream is reversible)
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",  # JPIP JPEG 2000
    "1.2.840.10008.1.2.4.100": "ISO_13818_2",
    "1.2.840.10008.1.2.4.101": "ISO_13818_2",
    "1.2.840.10008.1.2.4.102": "ISO_14496_10",
    "1.2.840.10008.1.2.4.103": "ISO_14496_10",
    "1.2.840.10008.1.2.4.104": "ISO_14496_10",
    "1.2.840.10008.1.2.4.105": "ISO_14496_10",
    "1.2.840.10008.1.2.4.106": "ISO_14496_10",
    "1.2.840.10008.1.2.4.107": "ISO_23008_2",
    "1.2.840.10008.1.2.4.108": "ISO_23008_2",
}
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def convert(data: bytes, stored_ts: str, target_ts: str) -> Dataset:
    """The stored object (Part 10 *data*) as a new dataset to encode in *target_ts* (uncompressed, little endian).

    Every UID is kept (pydicom's ``decompress()`` would make a new SOP Instance UID); a lossy stored
    syntax is recorded in Lossy Image Compression (0028,2110) "01" with its ratio and method; big
    endian binary values are swapped.
    """
    stored = UID(stored_ts)
    if UID(target_ts) not in UNCOMPRESSED:
        raise ValueError(f"cannot convert to {target_ts}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(BytesIO(data), force=True)
        if stored.is_compressed:
            compressed_bytes = len(ds.PixelData)
            lossy = _is_lossy(stored, ds)
            ds.decompress(generate_instance_uid=False)
            if lossy:
                _mark_lossy(ds, stored, compressed_bytes)
        out = _rebuilt(ds, swap=not stored.is_little_endian)
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = target_ts
    return out


def _is_lossy(stored: UID, ds: Dataset) -> bool:
    if str(stored) not in LOSSY_METHODS:
        return str(ds.get("LossyImageCompression", "")) == "01"
    if str(stored) == "1.2.840.10008.1.2.4.91":
        return not _j2k_reversible(ds)
    return True


def _j2k_reversible(ds: Dataset) -> bool:
    """Whether a JPEG 2000 codestream uses the reversible 5-3 wavelet (its COD marker says so)."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    except Exception:
        return False
    cod = frame.find(b"\xff\x52")
    return cod >= 0 and len(frame) > cod + 13 and frame[cod + 13] == 1


def _mark_lossy(ds: Dataset, stored: UID, compressed_bytes: int) -> None:
    # What the object already says is kept; what it lacks is added for this compression, one
    # ratio and one method (the two are paired value by value).
    ds.LossyImageCompression = "01"
    method = LOSSY_METHODS.get(str(stored), "ISO_10918_1")
    ratio = "LossyImageCompressionRatio" in ds and ds.data_element("LossyImageCompressionRatio").VM
    methods = "LossyImageCompressionMethod" in ds and ds.data_element("LossyImageCompressionMethod").VM
    if not ratio and not methods:
        ds.LossyImageCompressionRatio = f"{len(ds.PixelData) / max(compressed_bytes, 1):.4g}"[:16]
        ds.LossyImageCompressionMethod = method
    elif ratio == 1 and not methods:
        ds.LossyImageCompressionMethod = method


def _rebuilt(src: Dataset, *, swap: bool) -> Dataset:
    """A new dataset with *src*'s elements (and no original encoding), binary values swapped to little endian."""
    out = Dataset()
    for elem in src:
        value = elem.value
        if elem.VR == "SQ":
            value = [_rebuilt(item, swap=swap) for item in value]
        elif swap and elem.VR in _SWAP_WIDTH and isinstance(value, (bytes, bytearray)):
            value = _swapped(bytes(value), _SWAP_WIDTH[elem.VR])
        out.add(DataElement(elem.tag, elem.VR, value))
    return out


def _swapped(data: bytes, width: int) -> bytes:
    import numpy as np

    usable = len(data) - len(data) % width
    kind = {2: "u2", 4: "u4", 8: "u8"}[width]
    return np.frombuffer(data[:usable], dtype=">" + kind).astype("<" + kind).tobytes() + data[usable:]
