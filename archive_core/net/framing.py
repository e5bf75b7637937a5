"""DIMSE messages as bytes, encoded as pynetdicom encodes them: the C-STORE-RQ command set, pending
C-MOVE/C-GET responses, a C-STORE-RSP read back (:class:`StoreStatus`), and P-DATA-TF framing at
the peer's maximum PDU length."""

from __future__ import annotations

import functools
import struct
from io import BytesIO

from pynetdicom.dimse_primitives import C_STORE


class StoreStatus:
    """The peer's answer to one C-STORE: its Status and, when it gave them, Error Comment and
    Offending Element. Read as pynetdicom's status dataset is (``.Status``, ``.get(keyword)``),
    without building a pydicom dataset per sub-operation."""

    __slots__ = ("Status", "ErrorComment", "OffendingElement")

    def __init__(self, status: int, comment: str | None = None, offending=None) -> None:
        self.Status = status
        self.ErrorComment = comment
        self.OffendingElement = offending

    def get(self, keyword: str, default=None):
        value = getattr(self, keyword, None) if keyword in self.__slots__ else None
        return default if value is None else value

    def __contains__(self, keyword: str) -> bool:
        return self.get(keyword) is not None

    def __repr__(self) -> str:
        return f"StoreStatus(0x{self.Status:04X}, {self.ErrorComment!r})"


def parse_store_response(pdu: bytes | memoryview):
    """(Message ID Being Responded To, Status, Error Comment, Offending Element) of a P-DATA-TF PDU
    (its body, after the 6-byte header) that holds exactly one whole C-STORE-RSP command set and
    nothing else, or None for any other PDU (a C-CANCEL, a fragmented or malformed message...)."""
    pdu = memoryview(pdu)
    if len(pdu) < 6:
        return None
    item_length = int.from_bytes(pdu[0:4], "big")
    if item_length + 4 != len(pdu) or item_length < 2 or pdu[5] != 0x03:  # one PDV: command, last fragment
        return None
    command = pdu[6:]
    fields: dict[int, memoryview] = {}
    pos, size = 0, len(command)
    while pos < size:
        if pos + 8 > size:
            return None
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        if group != 0x0000 or pos + length > size:
            return None
        fields[element] = command[pos:pos + length]
        pos += length
    try:
        if _us(fields[0x0100]) != 0x8001 or _us(fields[0x0800]) != 0x0101:  # C-STORE-RSP, no data set
            return None
        msg_id, status = _us(fields[0x0120]), _us(fields[0x0900])
    except (KeyError, ValueError):
        return None
    comment = fields.get(0x0902)
    offending = fields.get(0x0901)
    return (msg_id, status,
            bytes(comment).decode("ascii", "replace").rstrip("\x00 ") if comment is not None else None,
            [(g << 16) | e for g, e in struct.iter_unpack("<HH", offending[:len(offending) // 4 * 4])]
            if offending is not None else None)


def _us(value: memoryview) -> int:
    if len(value) != 2:
        raise ValueError("not a US value")
    return value[0] | value[1] << 8


# -- command sets: encoded once by pynetdicom, patched per message -----------------------------------

_GROUP_LENGTH = struct.pack("<HHI", 0x0000, 0x0000, 4)
_MESSAGE_ID = struct.pack("<HHI", 0x0000, 0x0110, 2)
_PLACEHOLDER_UID = "1.2"
_INSTANCE_UID = struct.pack("<HHI", 0x0000, 0x1000, 4) + b"1.2\x00"


@functools.lru_cache(maxsize=256)
def _command_template(sop_class_uid: str, priority: int, originator_aet: str | None,
                      originator_id: int | None) -> tuple[bytes, bytes, bytes]:
    """A C-STORE-RQ command set encoded once by pynetdicom's own message class, cut around the two
    values that change per message (Message ID, Affected SOP Instance UID): (before the Message ID,
    between the two, after the UID). The group length is recomputed per message."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dsutils import encode

    req = C_STORE()
    req.MessageID = 0
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = sop_class_uid
    req.AffectedSOPInstanceUID = _PLACEHOLDER_UID
    req.DataSet = BytesIO(b"\x00\x00")  # "a data set follows"
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    body = encode(message.command_set, True, True)[len(_GROUP_LENGTH) + 4:]
    mid = body.index(_MESSAGE_ID) + len(_MESSAGE_ID)
    uid = body.index(_INSTANCE_UID)
    return body[:mid], body[mid + 2:uid], body[uid + len(_INSTANCE_UID):]


def store_command(msg_id: int, sop_class_uid: str, sop_instance_uid: str, priority: int = 2,
                  originator_aet: str | None = None, originator_id: int | None = None) -> bytes:
    """The encoded command set (implicit VR little endian) of a C-STORE-RQ, as pynetdicom encodes it."""
    head, middle, tail = _command_template(sop_class_uid, priority, originator_aet, originator_id)
    uid = sop_instance_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\x00"
    body = b"".join((head, struct.pack("<H", msg_id), middle, struct.pack("<HHI", 0x0000, 0x1000, len(uid)), uid,
                     tail))
    return _GROUP_LENGTH + struct.pack("<I", len(body)) + body


# Implicit VR headers (tag, length 2) of the US values a pending C-MOVE or C-GET response patches.
_RSP_FIELDS = {name: struct.pack("<HHI", 0x0000, elem, 2) for name, elem in (
    ("MessageIDBeingRespondedTo", 0x0120), ("NumberOfRemainingSuboperations", 0x1020),
    ("NumberOfCompletedSuboperations", 0x1021), ("NumberOfFailedSuboperations", 0x1022),
    ("NumberOfWarningSuboperations", 0x1023))}


@functools.lru_cache(maxsize=64)
def _pending_template(kind: str, sop_class_uid: str) -> tuple[bytes, tuple[tuple[str, int], ...]]:
    """A pending (0xFF00) C-MOVE-RSP or C-GET-RSP without identifier, encoded once by pynetdicom's
    own message class, and where each patched US value is in it."""
    from pynetdicom import dimse_messages, dimse_primitives
    from pynetdicom.dsutils import encode

    rsp = getattr(dimse_primitives, kind)()
    rsp.AffectedSOPClassUID = sop_class_uid
    rsp.Status = 0xFF00
    for name in _RSP_FIELDS:
        setattr(rsp, name, 0)
    message = getattr(dimse_messages, f"{kind}_RSP")()
    message.primitive_to_message(rsp)
    command = encode(message.command_set, True, True)
    return command, tuple((name, command.index(header) + len(header)) for name, header in _RSP_FIELDS.items())


def pending_response_command(primitive) -> bytes | None:
    """The encoded command set of a pending C-MOVE/C-GET response *primitive* (pynetdicom's bytes),
    or None for any other message (a final response, one with an identifier)."""
    kind = type(primitive).__name__
    if kind not in ("C_MOVE", "C_GET") or primitive.Status != 0xFF00 or primitive.Identifier is not None:
        return None
    values = [getattr(primitive, name) for name in _RSP_FIELDS]
    if any(v is None for v in values) or primitive.AffectedSOPClassUID is None:
        return None
    template, offsets = _pending_template(kind, str(primitive.AffectedSOPClassUID))
    command = bytearray(template)
    for (_, offset), value in zip(offsets, values):
        struct.pack_into("<H", command, offset, value)
    return bytes(command)


# -- framing stored bytes into P-DATA-TF PDUs ---------------------------------------------------------

_PDU_HEADER = struct.Struct(">BBIIBB")  # PDU type, reserved, PDU length, PDV item length, context, control


def frame(context_id: int, data: memoryview, fragment: int, command: bool, last: bool, out: bytearray) -> None:
    """Append *data* to *out* as P-DATA-TF PDUs of one PDV each, at most *fragment* bytes of value per
    PDV (the peer's maximum PDU length less 6, as pynetdicom fragments); *last*: the final PDV of
    the command set or data set has the last-fragment bit."""
    more, final = (0x01, 0x03) if command else (0x00, 0x02)
    size = len(data)
    for start in range(0, size, fragment):
        piece = data[start:start + fragment]
        flag = final if last and start + fragment >= size else more
        out += _PDU_HEADER.pack(0x04, 0x00, len(piece) + 6, len(piece) + 2, context_id, flag)
        out += piece


def frame_pieces(context_id: int, data: memoryview, fragment: int, last: bool, pieces: list) -> None:
    """As :func:`frame` for a data set's bytes, appending each PDU's header and the slice of *data*
    it carries to *pieces* (for one ``sendmsg``) instead of copying them."""
    size = len(data)
    for start in range(0, size, fragment):
        piece = data[start:start + fragment]
        flag = 0x02 if last and start + fragment >= size else 0x00
        pieces.append(_PDU_HEADER.pack(0x04, 0x00, len(piece) + 6, len(piece) + 2, context_id, flag))
        pieces.append(piece)
