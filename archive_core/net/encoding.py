"""Fast DIMSE encoding: flat datasets (command sets, C-FIND answers) encoded without pydicom's writer.

pynetdicom encodes every dataset it sends with pydicom's writer: each C-FIND answer and command
set costs a full pydicom write, which profiles put at 40 % of the SCP's time per message.
:func:`install` routes pynetdicom's ``encode`` through :func:`encode`, which encodes flat datasets
of plain text and binary values directly and hands everything else to pynetdicom's own encoder.
It is an optimisation only: the bytes are the ones pynetdicom writes, so a process without it
(web, scheduler) sends the same messages. Stored objects are not encoded at all: they go out as
stored through archive_core/net/sender.py's ``send_c_store``, in any process.

tests/unit/test_fast_encoding.py checks the flat encoder byte for byte against pydicom's.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any, Callable

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
    cls = type(value)
    if cls is str or cls is int:  # most values: no isinstance against MultiValue's ABC
        text = value if cls is str else str(value)
    elif isinstance(value, (list, tuple, MultiValue)):
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
        raise _NotFlat  # big endian, or a stored object (sent as stored by sender.send_c_store, never encoded)
    elements = ds._dict
    plain = []
    for tag in sorted(elements):
        elem = elements[tag]
        if type(elem) is not DataElement:
            raise _NotFlat  # raw (undecoded) elements: let pydicom write them
        plain.append((tag, elem.VR, elem.value))
    return _encode_elements(plain, _charset(ds), is_implicit_vr)


def encode_elements(elements: list[tuple[int, str, Any]], is_implicit_vr: bool, is_little_endian: bool) -> bytes:
    """(tag, VR, value) triples, in ascending tag order, encoded as :func:`encode_flat` encodes the
    dataset holding them (the C-FIND answers built straight from index rows, without a Dataset)."""
    if not is_little_endian:
        raise _NotFlat
    charset = None
    if elements and elements[0][0] <= _SPECIFIC_CHARACTER_SET:
        charset = next((value for tag, _, value in elements if tag == _SPECIFIC_CHARACTER_SET), None)
    try:
        encoding = _CHARSETS[charset]
    except (KeyError, TypeError):
        raise _NotFlat from None
    return _encode_elements(elements, encoding, is_implicit_vr)


def _encode_elements(elements, encoding: str, is_implicit_vr: bool) -> bytes:
    out = bytearray()
    for tag, vr, value in elements:
        if vr in _TEXT:
            data = _text_bytes(vr, value, encoding)
        elif vr in _BINARY:
            data = _binary_bytes(vr, value, True)
        else:
            raise _NotFlat
        header, length_format = _header(tag, vr, is_implicit_vr)
        if length_format == "<H" and len(data) > 0xFFFF:
            raise _NotFlat
        out += header
        out += struct.pack(length_format, len(data))
        out += data
    return bytes(out)


@lru_cache(maxsize=4096)
def _header(tag: int, vr: str, is_implicit_vr: bool) -> tuple[bytes, str]:
    """The bytes of an element's header before its length, and the length's struct format."""
    tag_bytes = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if is_implicit_vr:
        return tag_bytes, "<I"
    if vr in _LONG_LENGTH:
        return tag_bytes + vr.encode() + b"\x00\x00", "<I"
    return tag_bytes + vr.encode(), "<H"


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


_BATCH_BYTES = 65536


class PendingAnswers:
    """Sends C-FIND pending answers straight to the peer's socket, one P-DATA-TF PDU each.

    pynetdicom builds, encodes and fragments a new command set for every answer, and its DUL thread
    encodes and sends command and identifier as two PDUs: most of a C-FIND's time with many matches.
    All pending answers of one query share one command set, so it is encoded once here (by
    pynetdicom's own message class, so the bytes are the ones pynetdicom would send) and each answer
    goes out as one PDU holding both PDVs, written by the association's own thread (several PDUs per
    write). pynetdicom has nothing queued for the peer while a C-FIND handler runs, and its final
    response is queued only after the handler returns; the handler flushes before that and before
    it hands an answer to pynetdicom, so the order on the wire is kept. An answer that does not fit
    the peer's maximum PDU, or any failure, falls back to pynetdicom's path for the rest of the query.
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
        self._batch = bytearray()

    @classmethod
    def for_event(cls, event, status: int) -> "PendingAnswers | None":
        try:
            return cls(event, status)
        except Exception:  # anything unexpected: pynetdicom's own path still works
            return None

    def send(self, identifier: Dataset) -> bool:
        """Queue one answer (see :meth:`send_encoded`); False when it must go (with all later ones) through
        pynetdicom instead."""
        if not self._usable:
            return False
        data = encode(identifier, *self._flags)
        if data is None:
            self._usable = False
            return False
        return self.send_encoded(data)

    def encode(self, elements: list[tuple[int, str, Any]]) -> bytes | None:
        """The identifier bytes of an answer given as (tag, VR, value) triples; None if they are not flat."""
        implicit, little, deflated = self._flags
        if deflated:
            return None
        try:
            return encode_elements(elements, implicit, little)
        except (_NotFlat, UnicodeEncodeError, struct.error, TypeError, ValueError):
            return None

    def send_encoded(self, data: bytes) -> bool:
        """Queue one encoded answer (sent when a batch is full or at :meth:`flush`); False as for :meth:`send`.

        Answers are written in batches of about 64 KiB: one system call per answer cost more than
        encoding it. Before any other message goes to the peer the caller flushes.
        """
        if not self._usable or not self._assoc.is_established:
            return False
        data_item = struct.pack(">IBB", len(data) + 2, self._context_id, 0x02) + data
        length = len(self._command_item) + len(data_item)
        if self._max_pdu and length > self._max_pdu:
            self._usable = False
            return False
        self._batch += b"\x04\x00" + struct.pack(">I", length) + self._command_item + data_item
        if len(self._batch) >= _BATCH_BYTES:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the queued answers to the socket."""
        if not self._batch:
            return
        data, self._batch = bytes(self._batch), bytearray()
        try:
            self._socket.sendall(data)
        except OSError:
            self._usable = False
            raise
