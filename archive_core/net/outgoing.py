"""What each stored instance goes out as: its stored bytes, converted, or unsendable.

An instance whose stored transfer syntax the receiver accepted goes out as the bytes received,
never decoded (:class:`StoredDataset`, sent by :func:`archive_core.net.sender.send_c_store`); any
other is converted (:func:`archive_core.net.conversion.convert`), else reported failed and nothing
of it is sent. Used by the C-MOVE and C-GET sub-operations and by
:func:`archive_core.net.push.send_instances`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom.presentation import PresentationContext

from archive_core.index.query import StoredInstance
from archive_core.net.conversion import UNCOMPRESSED, convert
from archive_core.part10 import dataset_offset

log = logging.getLogger(__name__)


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
