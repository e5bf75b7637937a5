"""Fast DIMSE encoding: flat datasets (command sets, C-FIND answers) encoded without pydicom's writer.

pynetdicom encodes every dataset it sends with pydicom's writer: each C-FIND answer and command
set costs a full pydicom write, which profiles put at 40 % of the SCP's time per message.
:func:`install` routes pynetdicom's ``encode`` through :func:`encode`, which encodes flat datasets
of plain text and binary values directly and hands everything else to pynetdicom's own encoder.
It is an optimisation only: the bytes are the ones pynetdicom writes, so a process without it
(web, scheduler) sends the same messages. Stored objects are not encoded at all: they go out as
stored through archive_core/net/scu.py's ``send_c_store``, in any process.

tests/unit/test_fast_encoding.py checks the flat encoder byte for byte against pydicom's.
"""

from __future__ import annotations

import struct
from typing import Callable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import association as _association
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dsutils as _dsutils
from pynetdicom import service_class as _service_class

_pynetdicom_encode: Callable = _dsutils.encode

_TEXT = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
# Text VRs whose values the Specific Character Set applies to; the others are ASCII.
_CHARSET_VRS = frozenset("LO LT PN SH ST UC UT".split())
_LONG_LENGTH = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_SPECIFIC_CHARACTER_SET = 0x00080005
_CHARSETS = {None: "ascii", "": "ascii", "ISO_IR 6": "ascii", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin-1"}


class _NotFlat(Exception):
    pass


def _charset(ds: Dataset) -> str:
    elem = ds._dict.get(_SPECIFIC_CHARACTER_SET)  # Dataset.get by keyword costs a dictionary lookup per call
    value = None if elem is None else elem.value
    if isinstance(value, (list, MultiValue)):
        raise _NotFlat
    try:
        return _CHARSETS[value]
    except (KeyError, TypeError):
        raise _NotFlat from None


def _text_bytes(vr: str, value, encoding: str) -> bytes:
    if value is None or value == "":
        return b""
    if isinstance(value, (list, tuple, MultiValue)):
        text = "\\".join("" if v is None else str(v) for v in value)
    elif isinstance(value, (bytes, bytearray)):
        raise _NotFlat
    else:
        text = str(value)
    data = text.encode(encoding if vr in _CHARSET_VRS else "ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _binary_bytes(vr: str, value, little: bool) -> bytes:
    if value is None or value == "":
        return b""
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return struct.pack(("<" if little else ">") + _BINARY[vr] * len(values), *values)


def encode_flat(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool) -> bytes:
    """*ds* encoded like pydicom would, for datasets of plain text and binary values only.

    Raises ``_NotFlat`` for anything else (sequences, bulk data, ambiguous VRs, other character sets).
    """
    if not is_little_endian or hasattr(ds, "_archivage_raw"):
        raise _NotFlat  # big endian, or a stored object (sent as stored by scu.send_c_store, never encoded)
    encoding = _charset(ds)
    out = bytearray()
    elements = ds._dict
    for tag in sorted(elements):
        elem = elements[tag]
        if type(elem) is not DataElement:
            raise _NotFlat  # raw (undecoded) elements: let pydicom write them
        vr = elem.VR
        if vr in _TEXT:
            data = _text_bytes(vr, elem.value, encoding)
        elif vr in _BINARY:
            data = _binary_bytes(vr, elem.value, True)
        else:
            raise _NotFlat
        out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if is_implicit_vr:
            out += struct.pack("<I", len(data))
        elif vr in _LONG_LENGTH:
            out += vr.encode() + b"\x00\x00" + struct.pack("<I", len(data))
        else:
            if len(data) > 0xFFFF:
                raise _NotFlat
            out += vr.encode() + struct.pack("<H", len(data))
        out += data
    return bytes(out)


def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's ``encode``, with the flat fast path described in the module docstring."""
    if not deflated:
        try:
            return encode_flat(ds, is_implicit_vr, is_little_endian)
        except (_NotFlat, UnicodeEncodeError, struct.error, TypeError, ValueError):
            pass
    return _pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    """Route pynetdicom's encoding through :func:`encode` (idempotent; set once when a server starts)."""
    for module in (_association, _dimse_messages, _service_class):
        module.encode = encode


class PendingAnswers:
    """Sends C-FIND pending answers straight to the peer's socket, one P-DATA-TF PDU each.

    pynetdicom builds, encodes and fragments a new command set for every answer, and its DUL thread
    encodes and sends command and identifier as two PDUs: most of a C-FIND's time with many matches.
    All pending answers of one query share one command set, so it is encoded once here (by
    pynetdicom's own message class, so the bytes are the ones pynetdicom would send) and each answer
    goes out as one PDU holding both PDVs, written by the association's own thread. pynetdicom has
    nothing queued for the peer while a C-FIND handler runs, and its final response is queued only
    after the handler returns, so the order on the wire is kept. An answer that does not fit the
    peer's maximum PDU, or any failure, falls back to pynetdicom's path for the rest of the query.
    """

    def __init__(self, event, status: int) -> None:
        from io import BytesIO

        from pynetdicom.dimse_messages import C_FIND_RSP
        from pynetdicom.dimse_primitives import C_FIND

        request = event.request
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = request.MessageID
        rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
        rsp.Status = status
        rsp.Identifier = BytesIO(b"\x00\x00")  # "a data set follows"
        message = C_FIND_RSP()
        message.primitive_to_message(rsp)
        command = b"\x03" + encode(message.command_set, True, True)
        self._context_id = event.context.context_id
        self._command_item = struct.pack(">IB", len(command) + 1, self._context_id) + command
        self._assoc = event.assoc
        self._socket = event.assoc.dul.socket.socket
        ts = UID(event.context.transfer_syntax)
        self._flags = (ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        self._max_pdu = event.assoc.dimse.maximum_pdu_size or 0
        self._usable = self._socket is not None

    @classmethod
    def for_event(cls, event, status: int) -> "PendingAnswers | None":
        try:
            return cls(event, status)
        except Exception:  # anything unexpected: pynetdicom's own path still works
            return None

    def send(self, identifier: Dataset) -> bool:
        """Send one answer; False when it must go (with all later ones) through pynetdicom instead."""
        if not self._usable or not self._assoc.is_established:
            return False
        data = encode(identifier, *self._flags)
        if data is None:
            self._usable = False
            return False
        data_item = struct.pack(">IBB", len(data) + 2, self._context_id, 0x02) + data
        length = len(self._command_item) + len(data_item)
        if self._max_pdu and length > self._max_pdu:
            self._usable = False
            return False
        try:
            self._socket.sendall(b"\x04\x00" + struct.pack(">I", length) + self._command_item + data_item)
        except OSError:
            self._usable = False
            raise
        return True
