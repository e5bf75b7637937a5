"""Our C-STORE SCU: sending stored objects to peers, as stored or converted without changing them.

Two callers: query/retrieve (:func:`load_for_sending` for the C-MOVE and C-GET sub-operations) and
:func:`send_instances`, which pushes to a peer on an association of our own (the facade's
retrieve-to-peer and the back-office's send and prefetch jobs).

Every association that sends stored objects sends them through :func:`send_c_store`, bound to that
association (:func:`use_stored_sender`): an instance whose stored transfer syntax the receiver
accepted goes out as the bytes received, never decoded; any other goes through pynetdicom's own
``send_c_store``. Nothing depends on process-wide patching, so the web, scheduler and archive
processes send the same bytes. An instance the receiver cannot take in its stored syntax is
converted (:func:`convert`) to explicit, else implicit, VR little endian, keeping every UID and, for
a lossy stored syntax, Lossy Image Compression with its ratio and method (as ``dcmdjpeg`` does);
otherwise it is reported failed and nothing of it is sent.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO, Callable, Iterable

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext

from archive_core.index.query import StoredInstance
from archive_core.net import tuning
from archive_core.part10 import dataset_offset
from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128
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


class StoredDataset(Dataset):
    """A stored object known by its UIDs and its stored bytes, sent as those bytes by :func:`send_c_store`.

    The bytes are either in memory (*raw*) or, as :func:`load_for_sending` makes them, a
    :class:`StoredFile` read in PDU-sized chunks while it is sent: a large object is never held whole.
    Its SOP Class UID, SOP Instance UID and transfer syntax are attributes (read as a dataset's
    are), not elements: given to an encoder other than :func:`send_c_store` it must not go out as
    an empty or two-element object, so pydicom's writer refuses it (``_Unencodable``) and
    pynetdicom reports that C-STORE failed.
    """

    _blank: dict = {}  # the attributes of an empty Dataset, made once (see of)

    @classmethod
    def of(cls, raw: "bytes | StoredFile", *, sop_class_uid: str, sop_instance_uid: str,
           transfer_syntax_uid: str) -> "StoredDataset":
        # One per C-MOVE/C-GET sub-operation: built without pydicom's __init__ and __setattr__
        # (each attribute a keyword lookup, about as long as sending the message's command set).
        if not cls._blank:
            cls._blank.update(Dataset().__dict__)
        ds = object.__new__(cls)
        ds.__dict__.update({k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in cls._blank.items()})
        ds.__dict__["_archivage_raw"] = raw
        ds.__dict__["_archivage_uids"] = (sop_class_uid, sop_instance_uid, _StoredMeta(transfer_syntax_uid))
        return ds

    # What pynetdicom and send_c_store read of it; a StoredDataset is never empty.
    SOPClassUID = property(lambda self: self.__dict__["_archivage_uids"][0])
    SOPInstanceUID = property(lambda self: self.__dict__["_archivage_uids"][1])
    file_meta = property(lambda self: self.__dict__["_archivage_uids"][2])

    def __bool__(self) -> bool:
        return True

    def keys(self):  # what pydicom's writer lists the elements to write with
        raise _Unencodable("a stored object is sent as its stored bytes only")


@dataclass(frozen=True)
class _StoredMeta:
    TransferSyntaxUID: str

    def get(self, keyword: str, default=None):
        return getattr(self, keyword, default)


@dataclass(frozen=True)
class StoredFile:
    """A stored Part 10 file whose dataset (what follows its meta group) is to be sent.

    It is opened once, by the sender (:meth:`Wire.send`), which reads it in chunks as it writes:
    *opener* is the store's (``BlobStore.open``): the file itself on a filesystem, a streaming
    ranged GET on an object store; no path, and never the whole object in memory.
    """

    opener: Callable[[], BinaryIO]
    name: str = "stored object"

    def open(self) -> BinaryIO:
        return self.opener()

    def dataset(self, f) -> int:
        """The dataset's length in the open file *f*, left positioned at the dataset's start."""
        # The size first: on an object store the head and the dataset then come from one GET.
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(_HEAD_BYTES)
        offset = dataset_offset(head)
        if len(head) == _HEAD_BYTES and offset > _HEAD_BYTES - 8:  # the walk reached the head's end: whole file
            f.seek(0)
            offset = dataset_offset(f.read())
        if size <= offset:
            raise ValueError(f"{self.name}: no dataset after the file meta information")
        f.seek(offset)
        return size - offset


_HEAD_BYTES = 4096


class _Unencodable(TypeError):
    pass


def proposed_contexts(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts to ask a destination for: each stored (SOP class, transfer syntax), and an
    uncompressed little endian fallback per SOP class for the other syntaxes."""
    wanted: dict[tuple[str, str], None] = {}
    for inst in instances:
        wanted[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
    contexts: list[PresentationContext] = []
    fallbacks: list[PresentationContext] = []
    seen_fallback: set[str] = set()
    for sop_class, ts in wanted:
        contexts.append(build_context(sop_class, [ts]))
        if UID(ts) not in UNCOMPRESSED and sop_class not in seen_fallback:
            seen_fallback.add(sop_class)
            fallbacks.append(build_context(sop_class, list(UNCOMPRESSED)))
    chosen = (contexts + fallbacks)[:MAX_CONTEXTS]
    if len(contexts) + len(fallbacks) > MAX_CONTEXTS:
        log.warning("more than %d presentation contexts needed; some instances may fail", MAX_CONTEXTS)
    return chosen


def transfer_plan(sop_class_uid: str, stored_ts: str, accepted: Iterable[PresentationContext]) -> str | None:
    """The transfer syntax to send an instance in over *accepted* contexts (ours as SCU), or None.

    The stored syntax when accepted; else explicit, then implicit, VR little endian (converted).
    """
    syntaxes = {str(cx.transfer_syntax[0]) for cx in accepted if cx.abstract_syntax == sop_class_uid and cx.as_scu}
    if stored_ts in syntaxes:
        return stored_ts
    for ts in UNCOMPRESSED:
        if ts in syntaxes:
            return ts
    return None


def _unsendable(inst: StoredInstance) -> Dataset:
    # A dataset no accepted context fits: pynetdicom refuses to send it and counts the
    # sub-operation failed, with this SOP Instance UID in the Failed SOP Instance UID List.
    ds = Dataset()
    ds.SOPClassUID = inst.sop_class_uid
    ds.SOPInstanceUID = inst.sop_instance_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.999"  # never accepted
    return ds


def load_for_sending(
    open_blob: Callable[[StoredInstance], BinaryIO], inst: StoredInstance, accepted: list[PresentationContext]
) -> Dataset:
    """The dataset to send for one instance: as stored, converted, or unsendable."""
    plan = transfer_plan(inst.sop_class_uid, inst.transfer_syntax_uid, accepted)
    if plan is None:
        log.warning("no accepted context for %s in %s", inst.sop_instance_uid, inst.transfer_syntax_uid)
        return _unsendable(inst)
    try:
        if plan == inst.transfer_syntax_uid:
            return StoredDataset.of(
                StoredFile(lambda: open_blob(inst), inst.sop_instance_uid),
                sop_class_uid=inst.sop_class_uid,
                sop_instance_uid=inst.sop_instance_uid,
                transfer_syntax_uid=inst.transfer_syntax_uid,
            )
        with open_blob(inst) as f:  # a conversion decodes the whole object (pydicom) anyway
            data = f.read()
        return convert(data, inst.transfer_syntax_uid, plan)
    except Exception as exc:
        log.error("cannot send %s: %s", inst.sop_instance_uid, exc.__class__.__name__)
        return _unsendable(inst)


def load_stored(open_blob: Callable[[StoredInstance], BinaryIO], inst: StoredInstance,
                accepted: list[PresentationContext]) -> "StoredDataset | None":
    """What :func:`load_for_sending` gives for an instance that goes out as stored; None for any
    other (nothing converted or logged here: load_for_sending does it when its turn comes)."""
    if transfer_plan(inst.sop_class_uid, inst.transfer_syntax_uid, accepted) != inst.transfer_syntax_uid:
        return None
    return StoredDataset.of(StoredFile(lambda: open_blob(inst), inst.sop_instance_uid),
                            sop_class_uid=inst.sop_class_uid, sop_instance_uid=inst.sop_instance_uid,
                            transfer_syntax_uid=inst.transfer_syntax_uid)


def read_next(dataset: Dataset, following: Dataset | None) -> None:
    """Name the sub-operation after *dataset*: when that one goes out as stored, its file is opened
    and its first chunk read while the peer answers *dataset* (:meth:`Wire.read_ahead`)."""
    nxt = getattr(following, "_archivage_raw", None) if following is not None else None
    if isinstance(dataset, StoredDataset) and isinstance(nxt, StoredFile):
        dataset.__dict__["_archivage_next"] = nxt


# -- conversions -----------------------------------------------------------------------------------


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


# -- sending ---------------------------------------------------------------------------------------


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


def send_c_store(assoc: Association, dataset: Dataset, msg_id: int = 1, priority: int = 2,
                 originator_aet: str | None = None, originator_id: int | None = None):
    """pynetdicom's ``Association.send_c_store``, sending a :class:`StoredDataset` as its stored bytes.

    The stored syntax must be an accepted context of the SOP class (``load_for_sending`` makes
    sure of it). The request is framed here straight into P-DATA-TF PDUs and written to the
    association's socket by the calling thread (:class:`Wire`); the response is read from the
    socket by the same thread while the DUL thread is parked (:meth:`Wire.store_response`), or,
    for anything else than a plain C-STORE-RSP, by pynetdicom (no asynchronous operations are
    negotiated: each request waits for its response). Returns a :class:`StoreStatus`, or an
    empty dataset when no answer came. The steps around the message are pynetdicom's own
    (pinned in requirements.txt; tests/unit/test_sender.py covers the private attributes used).
    """
    raw = getattr(dataset, "_archivage_raw", None)
    if raw is None:  # converted (or unsendable): pynetdicom encodes it
        give_back_reads(assoc)
        after_send = assoc.__dict__.get("_archivage_after_send")
        if after_send is not None:
            after_send()
        answer = Association.send_c_store(assoc, dataset, msg_id=msg_id, priority=priority,
                                          originator_aet=originator_aet, originator_id=originator_id)
        if getattr(assoc, "_archivage_held", False) and assoc.is_established:
            _wait_resumed(assoc)  # pynetdicom resumed the reactor: hold it again
            _pause(assoc)
        return answer
    if not assoc.is_established:
        raise RuntimeError("the association is not established")
    sop_class = str(dataset.SOPClassUID)
    context_id = Wire.of(assoc).context_id(sop_class, str(dataset.file_meta.TransferSyntaxUID))
    command = store_command(msg_id, sop_class, str(dataset.SOPInstanceUID), priority, originator_aet, originator_id)
    # As pynetdicom does: pause the association's reactor so the response is ours to read (a
    # C-GET's sub-operations run in the reactor's own thread, which is paused while it serves).
    if getattr(assoc, "_archivage_hold", False) and not getattr(assoc, "_archivage_held", False):
        hold(assoc)
    paused_here = threading.current_thread() is not assoc and not getattr(assoc, "_archivage_held", False)
    if paused_here:
        _pause(assoc)
    try:
        wire = Wire.of(assoc)
        reads = wire.take_reads()
        try:
            wire.send(context_id, command, raw)
        except ConnectionError as exc:  # the peer closed or aborted while we wrote: no response will come
            log.warning("association with %s lost while sending %s: %s", _peer(assoc), dataset.SOPInstanceUID, exc)
            _lost(assoc)
            return Dataset()
        after_send = assoc.__dict__.get("_archivage_after_send")
        if after_send is not None:
            after_send()
        if reads:
            wire.read_ahead(dataset.__dict__.get("_archivage_next"))
        answer = wire.store_response(msg_id) if reads else HANDED_BACK
        if answer is HANDED_BACK:  # pynetdicom's DUL reads (and decodes) the answer
            if getattr(assoc, "_archivage_held", False) or reads:
                rsp = _response(assoc)
            else:
                rsp = assoc.dimse.get_msg(block=True)[1]
            answer = _status_of(assoc, rsp) if rsp is not None else None
    finally:
        if paused_here:
            give_back_reads(assoc)
            assoc._reactor_checkpoint.set()
            _wait_resumed(assoc)
    if answer is None:
        if assoc.is_established:
            give_back_reads(assoc)
            assoc._handle_no_response()  # DIMSE timeout: pynetdicom aborts
        return Dataset()
    return answer


def _status_of(assoc: Association, rsp) -> "StoreStatus | None":
    # pynetdicom's _check_received_status, without a pydicom dataset.
    if not rsp.is_valid_response:
        log.error("invalid %s response from %s", type(rsp).__name__, _peer(assoc))
        assoc.abort()
        return None
    return StoreStatus(rsp.Status, rsp.ErrorComment, rsp.OffendingElement)


def give_back_reads(assoc) -> None:
    """Let pynetdicom's DUL thread read this association's socket again (see :meth:`Wire.take_reads`)."""
    wire = getattr(assoc, "_archivage_wire", None)
    if wire is not None:
        wire.give_back_reads()


HANDED_BACK = object()  # Wire.store_response: pynetdicom reads this answer


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


# -- framing stored bytes into P-DATA-TF PDUs ---------------------------------------------------------

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


def frame_pending_responses(assoc: Association, *, deferred: bool = False) -> None:
    """Make the pending C-MOVE/C-GET responses pynetdicom sends on *assoc* (one per sub-operation)
    go out as a patched command set written by the calling thread (:meth:`Wire.send_command`): pynetdicom
    builds a pydicom command set and queues it to its DUL thread for each. Other messages, and
    everything on other associations, go through pynetdicom as before.

    *deferred* (C-MOVE): each pending response is written just after the next C-STORE request has
    gone to the destination (see :class:`Capture`), so that the requestor's reading it overlaps
    with the destination's work instead of delaying the next request; any left go before the
    final response."""
    dimse = assoc.dimse
    dimse._archivage_deferred = deferred  # for this operation (a C-GET may follow a C-MOVE)
    if getattr(dimse, "_archivage_framed", False):
        return
    send_msg = dimse.send_msg

    def framed_send_msg(primitive, context_id: int) -> None:
        command = pending_response_command(primitive) if assoc.is_established else None
        if command is None:
            flush_pending_responses(assoc)
            give_back_reads(assoc)  # a final response: pynetdicom's DUL writes it and reads what follows
            send_msg(primitive, context_id)
            return
        if dimse._archivage_deferred:
            Wire.of(assoc).defer(context_id, command)
            return
        try:
            Wire.of(assoc).send_command(context_id, command)
        except ConnectionError as exc:  # as pynetdicom's DUL does: the closed connection ends the association
            log.warning("association with %s lost while answering: %s", _peer(assoc), exc)

    dimse.send_msg = framed_send_msg  # this association's DIMSE provider only
    dimse._archivage_framed = True


def flush_pending_responses(assoc) -> None:
    """Write the pending responses deferred on *assoc* (see :func:`frame_pending_responses`)."""
    wire = getattr(assoc, "_archivage_wire", None)
    if wire is None or not wire.deferred:
        return
    try:
        wire.flush_deferred()
    except ConnectionError as exc:  # as pynetdicom's DUL does: the closed connection ends the association
        log.warning("association with %s lost while answering: %s", _peer(assoc), exc)


_WRITE_BYTES = 1 << 20  # about this much is read from the file and written per system call
_UNLIMITED_FRAGMENT = 1 << 20  # PDV size when the peer sets no maximum PDU length
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


_IOV_MAX = 1024


def _sendmsg_all(sock: socket.socket, pieces: list) -> None:
    """Write every buffer of *pieces* in order, with as few ``sendmsg`` calls as the socket takes."""
    start = 0
    while start < len(pieces):
        sent = sock.sendmsg(pieces[start:start + _IOV_MAX])
        while start < len(pieces) and sent >= len(pieces[start]):
            sent -= len(pieces[start])
            start += 1
        if sent:
            pieces[start] = memoryview(pieces[start])[sent:]


class Wire:
    """Writes C-STORE requests of one association straight to its socket, framed at the peer's
    maximum PDU length: the stored file is read in chunks of about 1 MiB into a buffer and each
    chunk goes out in one write, with no hand-off to pynetdicom's DUL thread.

    The peer's answer to each C-STORE is read by the same thread (:meth:`store_response`) while
    pynetdicom's DUL thread is parked (:meth:`take_reads`, archive_core/net/tuning.py
    ``ReadGate``): no hand-off between threads and no pydicom decoding per message. Any other PDU
    (an A-ABORT, an A-RELEASE-RQ, a C-CANCEL, a fragmented or malformed answer) is given to the
    DUL as it came, unread from its point of view, and the reads are given back: pynetdicom's
    state machine then handles it as it always does. The reads are given back too before anything
    of pynetdicom's is sent or awaited (a final response, A-RELEASE, A-ABORT: ``release``,
    ``abort`` and ``kill`` of the association do it first, see :func:`use_stored_sender`).

    Otherwise pynetdicom's DUL thread reads the peer's PDUs and writes its own (C-GET pending
    responses, A-RELEASE): every write of it, and every read on a TLS socket (an SSL connection
    is not safe for a read and a write at once), takes this association's lock, as a whole
    message of ours does. Messages are never interleaved and pynetdicom's queued PDUs go out
    before ours.
    """

    def __init__(self, assoc: Association) -> None:
        sock = assoc.dul.socket
        if sock is None or sock.socket is None:
            raise ConnectionError("the connection is closed")
        self._assoc = assoc
        self._sock = sock
        self._raw = sock.socket
        self._lock = threading.Lock()
        max_pdu = assoc.dimse.maximum_pdu_size or 0
        self.fragment = max_pdu - 6 if max_pdu else _UNLIMITED_FRAGMENT
        lock, send, recv = self._lock, sock.send, sock.recv

        def locked_send(data: bytes) -> None:
            with lock:
                send(data)

        sock.send = locked_send  # this association's socket object only
        tls = isinstance(self._raw, ssl.SSLSocket)
        self._unread = bytearray()  # a PDU read here and given to the DUL, which reads it first
        unread = self._unread

        def wire_recv(nr_bytes: int) -> bytearray:
            if unread:
                got = unread[:nr_bytes]
                del unread[:nr_bytes]
                if len(got) < nr_bytes:
                    got += wire_recv(nr_bytes - len(got))
                return got
            if tls:
                with lock:
                    return recv(nr_bytes)
            return recv(nr_bytes)

        sock.recv = wire_recv
        self._contexts: dict[tuple[str, str], int] = {}
        self._buffer = bytearray()  # the file chunks read, reused from message to message
        self._spare = bytearray()  # the next file's first chunk (read_ahead)
        self._deferred = bytearray()  # pending responses framed, not yet written (defer)
        self._ahead = None  # (StoredFile, open file, dataset length, bytes in _spare)
        # A plain socket takes the framed chunk as a list of buffers (sendmsg); TLS gets one copy.
        self._gather = not tls and hasattr(self._raw, "sendmsg")
        self._gate = getattr(assoc.dul, "_archivage_gate", None)  # None: pynetdicom's DUL always reads
        self._reads = False

    @classmethod
    def of(cls, assoc: Association) -> "Wire":
        wire = getattr(assoc, "_archivage_wire", None)
        if wire is None or wire._sock is not assoc.dul.socket:
            wire = assoc._archivage_wire = cls(assoc)
        return wire

    def _chunk_size(self, length: int) -> int:
        # Whole fragments per read: every PDV but the last is full, as pynetdicom fragments.
        return min(length, max(1, _WRITE_BYTES // self.fragment) * self.fragment)

    def send(self, context_id: int, command: bytes, data: "bytes | StoredFile") -> None:
        """Write one C-STORE-RQ: its *command* set then the dataset (bytes, or a stored file read as it goes)."""
        ahead, self._ahead = self._ahead, None
        prefilled = 0
        if ahead is not None and ahead[0] is data:  # opened and first chunk read while the peer answered
            _, source, length, prefilled = ahead
            self._buffer, self._spare = self._spare, self._buffer
        else:
            if ahead is not None:
                ahead[1].close()
            source = data.open() if isinstance(data, StoredFile) else None  # fails before any byte is sent
        try:
            if not prefilled:
                length = data.dataset(source) if source is not None else len(data)
            if length == 0:
                raise ValueError("empty dataset")
            if source is not None:
                size = self._chunk_size(length)
                if len(self._buffer) < size:
                    self._buffer = bytearray(size)
                buffer = memoryview(self._buffer)[:size]
            else:
                buffer = memoryview(data)
            out = bytearray()
            frame(context_id, memoryview(command), self.fragment, True, True, out)
            self._wait_for_pynetdicom()
            with self._lock:
                self._write(out, source, buffer, length, context_id, prefilled)
        finally:
            if source is not None:
                source.close()

    def read_ahead(self, data: "StoredFile | None") -> None:
        """Open the stored file to send next and read its first chunk, while the peer works on the
        message just sent (the C-MOVE/C-GET sub-operations name it, see :func:`read_next`). A file
        that cannot be read here is left for :meth:`send` to report."""
        self.drop_read_ahead()
        if not isinstance(data, StoredFile):
            return
        try:
            source = data.open()  # the file itself on a folder; a ranged GET's stream on an object store
        except Exception:  # missing, or the object store away: send() reports it in its turn
            return
        try:
            length = data.dataset(source)
            size = self._chunk_size(length)
            if len(self._spare) < size:
                self._spare = bytearray(size)
            got = source.readinto(memoryview(self._spare)[:size]) if size else 0
        except Exception:
            source.close()
            return
        if got != size or not size:
            source.close()
            return
        self._ahead = (data, source, length, got)

    def drop_read_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].close()

    def context_id(self, sop_class_uid: str, transfer_syntax_uid: str) -> int:
        """The accepted context to send *sop_class_uid* in *transfer_syntax_uid* (pynetdicom's choice, kept)."""
        key = (sop_class_uid, transfer_syntax_uid)
        found = self._contexts.get(key)
        if found is None:
            context = self._assoc._get_valid_context(sop_class_uid, UID(transfer_syntax_uid), "scu",
                                                     allow_conversion=False)
            found = self._contexts[key] = context.context_id
        return found

    def take_reads(self) -> bool:
        """Read the peer's answers in this thread from now on (True), the DUL thread parked; False
        when this association's DUL cannot be parked (pynetdicom's own polling, DICOM_DUL_LOOP_DELAY)."""
        if self._reads:
            return True
        if self._gate is None or not self._assoc.is_established or not self._gate.take():
            return False
        self._reads = True
        return True

    def give_back_reads(self) -> None:
        self.drop_read_ahead()
        if self._reads:
            self._reads = False
            self._gate.give_back()

    def store_response(self, msg_id: int):
        """The peer's answer to the C-STORE just sent: a :class:`StoreStatus`; None when none came
        within the DIMSE timeout; HANDED_BACK when it is pynetdicom's to read (anything other
        than one P-DATA-TF PDU holding the C-STORE-RSP: the PDU read is given to the DUL)."""
        timeout = self._assoc.dimse_timeout
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        header = self._recv_exact(6, deadline)
        if header is None:
            return None
        if len(header) < 6:  # the connection closed: the DUL finds it closed too
            self.give_back_reads()
            return HANDED_BACK
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = self._recv_exact(length, deadline) if pdu_type in (0x04, 0x05, 0x06, 0x07) else b""
        if body is None:
            return None
        parsed = parse_store_response(body) if pdu_type == 0x04 and len(body) == length else None
        dul = self._assoc.dul
        with suppress(AttributeError):
            dul._idle_timer.restart()  # as pynetdicom restarts it on each PDU it reads
        if parsed is None or parsed[0] != msg_id:
            self._unread += header
            self._unread += body
            dul._read_pdu_data()  # decoded and queued by pynetdicom, as if its thread had read it
            self.give_back_reads()
            return HANDED_BACK
        return StoreStatus(parsed[1], parsed[2], parsed[3])

    def _recv_exact(self, size: int, deadline: float):
        """*size* bytes from the socket (fewer if it closed), or None (reads given back) at the deadline."""
        out = bytearray()
        raw = self._raw
        pending = getattr(raw, "pending", None)  # an SSL socket's buffered bytes select() cannot see
        while len(out) < size:
            if not (pending and pending()):
                remaining = deadline - time.monotonic()
                try:
                    ready = remaining > 0 and select.select([raw], [], [], remaining)[0]
                except (OSError, ValueError):
                    ready = True  # recv reports what is wrong
                if not ready:
                    self.give_back_reads()
                    if out:  # half a PDU read: the connection cannot carry another
                        self._broken()
                    return None
            try:
                chunk = raw.recv(size - len(out))
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                return bytes(out)
            out += chunk
        return bytes(out)

    @property
    def deferred(self) -> bool:
        return bool(self._deferred)

    def defer(self, context_id: int, command: bytes) -> None:
        """Frame a message without data set to be written by :meth:`flush_deferred`."""
        frame(context_id, memoryview(command), self.fragment, True, True, self._deferred)

    def flush_deferred(self) -> None:
        out, self._deferred = self._deferred, bytearray()
        self._send_framed(out)

    def send_command(self, context_id: int, command: bytes) -> None:
        """Write one message that has no data set (a pending C-MOVE or C-GET response)."""
        out = bytearray()
        frame(context_id, memoryview(command), self.fragment, True, True, out)
        self._send_framed(out)

    def _send_framed(self, out: bytearray) -> None:
        """Write PDUs already framed, once pynetdicom has nothing queued ahead of them."""
        self._wait_for_pynetdicom()
        with self._lock:
            try:
                self._raw.sendall(out)
            except OSError as exc:
                self._broken()
                raise ConnectionError(str(exc)) from exc

    def _write(self, out: bytearray, source, buffer: memoryview, length: int, context_id: int,
               prefilled: int = 0) -> None:
        sent = 0
        written = False
        gather = self._gather
        try:
            while sent < length:
                if source is None:
                    chunk = buffer[sent:sent + max(1, _WRITE_BYTES // self.fragment) * self.fragment]
                elif prefilled:
                    chunk, prefilled = buffer[:prefilled], 0
                else:
                    size = source.readinto(buffer[:min(length - sent, len(buffer))])
                    if not size:
                        raise OSError("the stored file is shorter than when it was opened")
                    chunk = buffer[:size]
                sent += len(chunk)
                written = True
                if gather:  # the PDU headers and the chunk's slices in one sendmsg: the chunk is not copied
                    pieces = [out] if out else []
                    frame_pieces(context_id, chunk, self.fragment, sent >= length, pieces)
                    _sendmsg_all(self._raw, pieces)
                else:
                    frame(context_id, chunk, self.fragment, False, sent >= length, out)
                    self._raw.sendall(out)
                out = bytearray()
        except BaseException as exc:
            if not written:
                raise
            self._broken()  # part of a message may be on the wire: the connection cannot carry another
            if isinstance(exc, OSError):
                raise ConnectionError(str(exc)) from exc
            raise

    def _broken(self) -> None:
        log.warning("connection to %s dropped in the middle of a C-STORE", _peer(self._assoc))
        with suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)
        self._sock.event_queue.put("Evt17")  # transport closed, as pynetdicom reports a failed send

    def _wait_for_pynetdicom(self, timeout: float = 5.0) -> None:
        # What pynetdicom queued before (a C-GET pending response) goes out first.
        pending = self._assoc.dul.to_provider_queue.queue
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            time.sleep(0.0001)


def _response(assoc: Association):
    """The peer's answer while the reactor is held: what the reactor would notice (an A-ABORT, a
    closed connection) ends the wait, instead of the whole DIMSE timeout."""
    import queue

    deadline = time.monotonic() + (assoc.dimse_timeout or 1e9)
    while time.monotonic() < deadline:
        try:
            return assoc.dimse.msg_queue.get(timeout=0.05)[1]
        except queue.Empty:
            pass
        if assoc.acse.is_aborted() or not assoc.dul.is_alive():
            log.warning("association with %s ended while waiting for a C-STORE response", assoc.acceptor.ae_title)
            _lost(assoc)
            return None
    return None


def _lost(assoc: Association) -> None:
    # The reactor is held or busy in this thread: mark the association ended ourselves (pynetdicom's
    # reactor would) so that callers stop sending on it.
    give_back_reads(assoc)
    assoc._archivage_held = False
    assoc.is_aborted = True
    assoc.is_established = False
    assoc.kill()


def _peer(assoc: Association) -> str:
    return assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title


def _pause(assoc: Association) -> None:
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)


def hold(assoc: Association) -> None:
    """Keep the reactor of our own association paused between C-STOREs (until ``release()``,
    which resumes it): each C-STORE then skips the wait for the reactor to pause again (about 1 ms)."""
    _pause(assoc)
    assoc._archivage_held = True


def _wait_resumed(assoc: Association, timeout: float = 1.0) -> None:
    # pynetdicom's reactor leaves ``_is_paused`` True until it runs again: a C-STORE sent right
    # after this one would see that stale True, and the reactor would then take its response
    # ("unexpected C-STORE service message"). Wait until the reactor has resumed.
    deadline = time.monotonic() + timeout
    while assoc._is_paused and assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.00005)


def use_stored_sender(assoc: Association, *, hold_reactor: bool = False) -> None:
    """Make this association's C-STOREs (pynetdicom's C-GET and C-MOVE sub-operations too) go
    through :func:`send_c_store`; other associations are untouched. *hold_reactor*: an association
    of ours that only sends C-STOREs until it is released (:func:`hold`, from its first C-STORE)."""
    assoc._archivage_hold = hold_reactor
    assoc.send_c_store = functools.partial(send_c_store, assoc)
    if getattr(assoc, "_archivage_gives_back", False):
        return
    assoc._archivage_gives_back = True
    # Whatever pynetdicom does next needs its DUL thread reading again (see Wire.take_reads):
    # these are what pynetdicom calls to end an association, from its own code too.
    for name in ("release", "abort", "kill"):
        setattr(assoc, name, _giving_back(assoc, getattr(assoc, name)))


def _giving_back(assoc, method):
    @functools.wraps(method)
    def giving_back(*args, **kwargs):
        give_back_reads(assoc)
        return method(*args, **kwargs)

    return giving_back


@dataclass
class Capture:
    """Holds the association a C-MOVE opens to its destination, to read its accepted contexts."""

    assoc: object = None
    contexts: list[PresentationContext] = field(default_factory=list)
    # The C-MOVE's own association: its deferred pending responses go out after each C-STORE request.
    requestor: object = None

    def on_accepted(self, event) -> None:
        self.assoc = event.assoc
        self.contexts = list(event.assoc.accepted_contexts)
        use_stored_sender(event.assoc, hold_reactor=True)
        if self.requestor is not None:
            event.assoc._archivage_after_send = functools.partial(flush_pending_responses, self.requestor)


def tune_socket(assoc, loop_delay: float) -> None:
    """Nagle off and no idle sleep in the DUL loop (as the server does for its associations)."""
    raw = assoc.dul.socket.socket if assoc.dul.socket else None
    tuning.set_nodelay(raw)
    assoc.dul._run_loop_delay = loop_delay
    if not loop_delay:
        tuning.tune_requestor(assoc)  # no spinning DUL (where tuning.install() routed pynetdicom's sleeps)
    # pynetdicom drops the socket of a connection the peer closed without closing it (its shutdown
    # fails first): kept here, closed by close_socket when the connection ends.
    assoc._archivage_socket = raw


def close_socket(event) -> None:
    """pynetdicom ``EVT_CONN_CLOSE`` on our own associations: see :func:`tune_socket`."""
    raw = getattr(event.assoc, "_archivage_socket", None)
    if raw is not None:
        raw.close()


@dataclass(frozen=True)
class Failure:
    """One instance a peer did not store as sent: its C-STORE status (None: never answered) and comment."""

    sop_instance_uid: str
    status: int | None
    comment: str


@dataclass
class SendResult:
    """What a push to a peer did (retrieve-to-peer, send jobs, prefetch).

    Only status 0x0000 counts as completed. A warning (0xB000, 0xB006, 0xB007) means the peer
    stored the object but not as sent (coerced or discarded elements): it is counted in
    ``warning`` and listed in ``failures`` with its status and comment, so a send job with one is
    not ``done``.
    """

    completed: int = 0
    warning: int = 0
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)
    message: str = ""  # why the push stopped early, if it did

    @property
    def failed_uids(self) -> list[str]:
        return [f.sop_instance_uid for f in self.failures if f.status is None or (f.status & 0xF000) != 0xB000]

    @property
    def sent(self) -> int:
        return self.completed

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.warning == 0 and not self.message


def send_instances(
    open_blob: Callable[[StoredInstance], BinaryIO],
    instances: list[StoredInstance],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    loop_delay: float = 0.0,
    timeout: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    tls_args=None,
) -> SendResult:
    """Push *instances* to a peer on one association of our own; *progress(sent, failed)* after each.

    Each instance goes in its stored transfer syntax when accepted (its bytes as stored), else
    converted, else it is counted failed (:func:`load_for_sending`).
    """
    result = SendResult()
    if not instances:
        return result
    try:
        # pynetdicom leaks its socket when the connection is refused: find out first, with ours.
        socket.create_connection((host, port), timeout=min(timeout, 10)).close()
    except OSError as exc:
        return all_failed(instances, f"{called_ae} unreachable ({exc.strerror or exc})")
    refused = tls_refusal(host, port, tls_args, timeout=min(timeout, 10))
    if refused:
        return all_failed(instances, f"DICOM TLS with {called_ae} failed ({refused})")
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    handlers = [(evt.EVT_CONN_OPEN, lambda event: tune_socket(event.assoc, loop_delay)),
                (evt.EVT_CONN_CLOSE, close_socket)]
    # tls_args: (SSLContext, server hostname) for a peer registered --tls (archive_core/net/tls.py).
    assoc = ae.associate(host, port, contexts=proposed_contexts(instances), ae_title=called_ae, max_pdu=0,
                         evt_handlers=handlers, tls_args=tls_args)
    if not assoc.is_established:
        return all_failed(instances, f"association with {called_ae} refused or failed")
    try:
        accepted = list(assoc.accepted_contexts)
        use_stored_sender(assoc)  # its release and abort give the reads back to pynetdicom first
        hold(assoc)
        for n, inst in enumerate(instances):
            if cancelled():
                result.message = "cancelled"
                break
            if not assoc.is_established:
                result.message = "association lost"
                for rest in instances[n:]:
                    result.failed += 1
                    result.failures.append(Failure(rest.sop_instance_uid, None, "association lost"))
                break
            ds = load_for_sending(open_blob, inst, accepted)
            comment = ""
            try:
                answer = send_c_store(assoc, ds)
                status = answer.get("Status")
                comment = str(answer.get("ErrorComment", "") or "")
            except Exception as exc:  # no accepted context, network trouble
                log.warning("C-STORE of %s to %s failed: %s", inst.sop_instance_uid, called_ae, exc)
                status = None
                comment = "not sent: no transfer syntax the peer accepts" if isinstance(exc, ValueError) else "not sent"
            if status == 0x0000:
                result.completed += 1
            else:
                if status is not None and (status & 0xF000) == 0xB000:
                    result.warning += 1
                else:
                    result.failed += 1
                result.failures.append(Failure(inst.sop_instance_uid, status, comment))
                log.warning("C-STORE of %s to %s answered %s", inst.sop_instance_uid, called_ae,
                            "nothing" if status is None else f"0x{status:04X}")
            if progress:
                progress(result.sent, result.failed + result.warning)
    finally:
        if assoc.is_established:
            assoc.release()
        if getattr(assoc, "_archivage_socket", None) is not None:
            assoc._archivage_socket.close()  # see tune_socket
    log.info("sent %d instances to %s (%d failed, %d warnings)", result.sent, called_ae, result.failed, result.warning)
    return result


def tls_refusal(host: str, port: int, tls_args, *, timeout: float) -> str | None:
    """Why a TLS handshake with the peer fails (its certificate, or no TLS there), or None when it
    succeeds or *tls_args* is None. pynetdicom leaks the socket of a failed handshake, and says less."""
    if tls_args is None:
        return None
    context, hostname = tls_args
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=hostname):
                return None
    except OSError as exc:  # ssl.SSLError is one
        return str(getattr(exc, "reason", None) or exc.strerror or exc)


def all_failed(instances: list[StoredInstance], message: str) -> SendResult:
    log.warning("send to peer: %s", message)
    return SendResult(failed=len(instances), message=message,
                      failures=[Failure(i.sop_instance_uid, None, message) for i in instances])
