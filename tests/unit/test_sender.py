"""The C-STORE sender's rules: syntax order per requestor, conversions that keep UIDs, stored bytes never re-encoded."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import build_context

from archive_core.net import conversion, framing, outgoing, syntaxes
from archive_core.net.wire import Wire
from archive_core.part10 import dataset_offset

ILE, ELE, EBE, DEFL = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
JPEG_LL, JPEG_BASE, J2K = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91"


@pytest.mark.parametrize("proposed, accepted", [
    ([ILE, ELE, DEFL, EBE], ELE),        # pynetdicom's default order: implicit first, never chosen over explicit
    ([ELE, EBE, ILE], ELE),              # DCMTK's default
    ([EBE, ELE, ILE], EBE),              # a big endian modality that says so first
    ([ILE], ILE),                        # implicit only: implicit
    ([JPEG_LL, ELE, ILE], JPEG_LL),      # the modality prefers to send JPEG lossless: stored so
    ([ILE, JPEG_BASE, ELE], JPEG_BASE),  # implicit moves after explicit, not before what the modality put first
])
def test_storage_contexts_take_the_requestors_order_without_implicit_over_explicit(proposed, accepted):
    assert syntaxes.storage_order(proposed)[0] == accepted


@pytest.mark.parametrize("proposed, accepted", [
    ([ELE, EBE, ILE], ELE),              # getscu's default
    ([ILE, ELE], ELE),
    ([JPEG_LL, ELE, EBE, ILE], ELE),     # one context: the syntax every stored object can be sent in
    ([JPEG_LL], JPEG_LL),                # a context of its own: compressed objects go back as stored
])
def test_retrieve_contexts_prefer_what_every_object_can_be_sent_in(proposed, accepted):
    assert syntaxes.retrieve_order(proposed)[0] == accepted


def test_contexts_for_orders_only_what_the_requestor_proposed_and_keeps_roles():
    from pynetdicom.presentation import PresentationContext

    supported = []
    for uid in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"):
        cx = PresentationContext()
        cx.abstract_syntax, cx.transfer_syntax = uid, [ILE, ELE, EBE, JPEG_LL]
        cx.scu_role, cx.scp_role = True, True
        supported.append(cx)
    find = PresentationContext()
    find.abstract_syntax, find.transfer_syntax = "1.2.840.10008.5.1.4.1.2.2.1", [ILE, ELE]
    supported.append(find)
    requested = [build_context("1.2.840.10008.5.1.4.1.1.2", [ILE, ELE]),
                 build_context("1.2.840.10008.5.1.4.1.1.4", [JPEG_LL, ILE, ELE]),
                 build_context("1.2.840.10008.5.1.4.1.2.2.1", [ILE, ELE])]
    ct, mr, study_find = syntaxes.contexts_for(requested, supported, {"1.2.840.10008.5.1.4.1.1.4": (False, True)})
    assert study_find.transfer_syntax == [ELE, ILE]  # the same rule for the other services
    assert ct.transfer_syntax == [ELE, ILE] and (ct.scu_role, ct.scp_role) == (True, True)
    assert mr.transfer_syntax == [ELE, ILE, JPEG_LL]  # C-GET: we send MR in this context


def _part10(name: str) -> tuple[bytes, str]:
    path = Path(get_testdata_file(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return path.read_bytes(), str(dcmread(path).file_meta.TransferSyntaxUID)


def _written(ds, target: str):
    """*ds* encoded as pynetdicom would in *target*, read back."""
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID
    from pynetdicom.dsutils import encode

    ts = UID(target)
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian)
    assert data is not None
    return read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)


@pytest.mark.parametrize("name, target", [
    ("JPGExtended.dcm", ELE),
    ("JPEGLSNearLossless_08.dcm", ILE),
    ("MR_small_bigendian.dcm", ELE),
    ("MR_small_bigendian.dcm", ILE),
    ("MR_small_RLE.dcm", ILE),
    ("MR_small_jp2klossless.dcm", ELE),
    ("SC_rgb_jpeg_dcmtk.dcm", ELE),
    ("JPEG2000.dcm", ELE),
])
def test_conversions_keep_every_uid_and_the_pixels(name, target):
    """Bad cases tried: pydicom's decompress() making a new SOP Instance UID; big endian words
    written unswapped into little endian (the reported 0xB000)."""
    data, stored = _part10(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = dcmread(BytesIO(data))
        expected = original.pixel_array.copy()
        got = _written(conversion.convert(data, stored, target), target)
        got.file_meta = type(original.file_meta)()
        got.file_meta.TransferSyntaxUID = target
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            assert got.get(keyword) == original.get(keyword)
        if original.PhotometricInterpretation.startswith("YBR"):
            assert np.abs(got.pixel_array.astype(int) - expected.astype(int)).max() <= 2
        else:
            assert np.array_equal(got.pixel_array, expected)


@pytest.mark.parametrize("name, method", [
    ("JPGExtended.dcm", "ISO_10918_1"),            # JPEG extended
    ("JPEGLSNearLossless_08.dcm", "ISO_14495_1"),  # JPEG-LS near-lossless
    ("SC_rgb_jpeg_dcmtk.dcm", "ISO_10918_1"),      # JPEG baseline
])
def test_lossy_syntaxes_are_recorded_as_lossy(name, method):
    data, stored = _part10(name)
    got = conversion.convert(data, stored, ELE)
    assert got.LossyImageCompression == "01" and method in got.LossyImageCompressionMethod


@pytest.mark.parametrize("stored, accepted, plan", [
    (JPEG_LL, [JPEG_LL, ELE], JPEG_LL),   # as stored
    (JPEG_LL, [ILE], ILE),                # converted
    (ELE, [EBE], None),                   # big endian only: not sent
    (ELE, [JPEG_LL], None),               # only a compressed syntax other than the stored one: not sent
    (EBE, [ELE, ILE], ELE),
])
def test_what_each_instance_is_sent_in(stored, accepted, plan):
    contexts = []
    for n, ts in enumerate(accepted):
        cx = build_context("1.2.840.10008.5.1.4.1.1.2", [ts])
        cx.context_id, cx.result, cx._as_scu, cx._as_scp = 2 * n + 1, 0, True, False
        contexts.append(cx)
    assert outgoing.transfer_plan("1.2.840.10008.5.1.4.1.1.2", stored, contexts) == plan


def test_a_lossy_object_keeps_its_lossy_history_and_gets_what_it_lacked():
    """JPEG2000.dcm says 01 and ratio 2097 but no method: kept, and the method is added."""
    data, stored = _part10("JPEG2000.dcm")
    got = conversion.convert(data, stored, ELE)
    assert got.LossyImageCompression == "01"
    assert float(got.LossyImageCompressionRatio) == 2097
    assert got.LossyImageCompressionMethod == "ISO_15444_1"


def test_a_lossy_object_without_history_gets_ratio_and_method():
    data, stored = _part10("SC_rgb_jpeg_dcmtk.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(BytesIO(data))
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        delattr(ds, keyword)
    buf = BytesIO()
    ds.save_as(buf)
    got = conversion.convert(buf.getvalue(), stored, ELE)
    assert (got.LossyImageCompression, got.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    assert float(got.LossyImageCompressionRatio) > 1


def test_a_lossless_conversion_adds_no_lossy_history():
    data, stored = _part10("MR_small_RLE.dcm")
    assert "LossyImageCompression" not in conversion.convert(data, stored, ELE)


def test_a_stored_object_is_never_encoded_as_its_two_uids():
    """Bad case tried: the reported 476-byte objects. A StoredDataset given to pynetdicom's own
    encoder (or the server's fast one) is refused instead of encoded."""
    import logging

    from pynetdicom.dsutils import encode

    from archive_core.net.encoding import encode as fast_encode

    stored = outgoing.StoredDataset.of(b"\x08\x00", sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4",
                                  transfer_syntax_uid=ELE)
    logging.disable(logging.CRITICAL)
    try:
        assert encode(stored, False, True) is None
        assert fast_encode(stored, False, True) is None
    finally:
        logging.disable(logging.NOTSET)


def test_the_pynetdicom_internals_the_sender_uses_exist():
    """sender.send_c_store follows Association.send_c_store's steps (pynetdicom pinned in requirements.txt)."""
    from pynetdicom.association import Association

    for name in ("_get_valid_context", "_handle_no_response", "send_c_store", "release", "abort", "kill"):
        assert callable(getattr(Association, name))
    assoc = Association.__new__(Association)
    Association.__init__(assoc, __import__("pynetdicom").AE(), "requestor")
    assert hasattr(assoc, "_reactor_checkpoint") and hasattr(assoc, "_is_paused")
    assert hasattr(assoc.dimse, "msg_queue") and callable(assoc.acse.is_aborted)
    # Wire.store_response: the DUL's own PDU reader, its idle timer and its kill flag (tuning.ReadGate).
    assert callable(assoc.dul._read_pdu_data) and callable(assoc.dul._idle_timer.restart)
    assert assoc.dul._kill_thread is False


def test_the_pynetdicom_internals_the_release_wait_uses_exist():
    """sender._wait_closed (after the A-RELEASE-RP of our own association) reads the DUL's state and
    the association's release flag and mode; a new requestor's DUL is idle (Sta1), not released."""
    from pynetdicom.association import Association

    assoc = Association.__new__(Association)
    Association.__init__(assoc, __import__("pynetdicom").AE(), "requestor")
    assert assoc.dul.state_machine.current_state == "Sta1"
    assert assoc.is_released is False and assoc.is_requestor is True


def _pynetdicom_pdus(context_id: int, command_fields: dict, dataset: bytes, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs pynetdicom writes for a C-STORE-RQ (its own message class and fragmentation)."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    req = C_STORE()
    for name, value in command_fields.items():
        setattr(req, name, value)
    req.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    out = bytearray()
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return bytes(out)


@pytest.mark.parametrize("msg_id, instance_uid, originator", [
    (1, "1.2.3.4", (None, None)),
    (65535, "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678", ("MOVESCU", 7)),
    (300, "1.23", ("A", 65535)),  # odd and even UID lengths, one-character AE title
])
def test_the_patched_command_set_is_the_one_pynetdicom_encodes(msg_id, instance_uid, originator):
    """Bad cases tried: a Message ID or UID left from the template, a UID of odd length without its
    padding, a group length not recomputed: the command set must be pynetdicom's, byte for byte."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    aet, originator_id = originator
    for sop_class in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.481.3"):
        req = C_STORE()
        req.MessageID, req.Priority = msg_id, 2
        req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class, instance_uid
        req.MoveOriginatorApplicationEntityTitle, req.MoveOriginatorMessageID = aet, originator_id
        req.DataSet = BytesIO(b"\x00\x00")
        message = C_STORE_RQ()
        message.primitive_to_message(req)
        expected = encode(message.command_set, True, True)
        assert framing.store_command(msg_id, sop_class, instance_uid, 2, aet, originator_id) == expected


class _FakeSocket:
    """pynetdicom's AssociationSocket as the Wire uses it, over one end of a socket pair."""

    def __init__(self, raw):
        import queue

        self.socket = raw
        self.event_queue = queue.Queue()

    def send(self, data):
        self.socket.sendall(data)

    def recv(self, n):
        return self.socket.recv(n)


def _fake_assoc(raw, max_pdu: int):
    import queue
    from types import SimpleNamespace

    dul = SimpleNamespace(socket=_FakeSocket(raw), to_provider_queue=queue.Queue())
    return SimpleNamespace(dul=dul, dimse=SimpleNamespace(maximum_pdu_size=max_pdu),
                           acceptor=SimpleNamespace(ae_title="PEER"))


@pytest.mark.parametrize("max_pdu, size", [(16384, 3 * (1 << 20) + 4321), (4096, 70_000), (0, 50_000)])
def test_a_stored_file_goes_out_framed_as_pynetdicom_frames_it(tmp_path, max_pdu, size):
    """A stored Part 10 file, streamed in 1 MiB reads, is sent as exactly the PDUs pynetdicom would
    write for its dataset: the peer's maximum PDU length honoured in every PDU, the last-fragment bit
    on the final PDV only (bad cases tried: a chunk boundary taken for the end of the data set, the
    meta group sent as data, a PDU over the maximum)."""
    import socket
    import threading

    ds = __import__("tests.helpers", fromlist=["make_ct"]).make_ct()
    ds.PixelData = bytes(np.random.default_rng(1).integers(0, 256, size - size % 2, dtype=np.uint8))
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    stored = outgoing.StoredFile(lambda: open(path, "rb"))
    with open(path, "rb") as f:
        length = stored.dataset(f)
        offset = f.tell()
    assert data[offset:offset + 2] == b"\x08\x00"  # the dataset's first group, not the meta group
    assert offset + length == len(data)

    ours, theirs = socket.socketpair()
    received = bytearray()

    def read():
        while chunk := theirs.recv(1 << 20):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    wire = Wire(_fake_assoc(ours, max_pdu))
    command = framing.store_command(5, ds.SOPClassUID, ds.SOPInstanceUID)
    wire.send(3, command, stored)
    ours.shutdown(socket.SHUT_WR)
    reader.join(30)
    ours.close()
    theirs.close()
    fields = {"MessageID": 5, "Priority": 2, "AffectedSOPClassUID": ds.SOPClassUID,
              "AffectedSOPInstanceUID": ds.SOPInstanceUID}
    assert bytes(received) == _pynetdicom_pdus(3, fields, data[offset:], max_pdu)
    pos = 0
    while pos < len(received) and max_pdu:
        length = int.from_bytes(received[pos + 2:pos + 6], "big")
        assert length <= max_pdu
        pos += 6 + length


@pytest.mark.parametrize("kind", ["C_MOVE", "C_GET"])
def test_pending_retrieve_responses_are_the_command_sets_pynetdicom_encodes(kind):
    """Bad cases tried: a count or Message ID Being Responded To left from the template; a final
    response or one with an identifier framed as pending (it must go through pynetdicom)."""
    from pynetdicom import dimse_messages, dimse_primitives
    from pynetdicom.dsutils import encode

    for counts in ((199, 1, 0, 0), (0, 65535, 3, 2), (1000, 77, 65535, 1)):
        rsp = getattr(dimse_primitives, kind)()
        rsp.MessageIDBeingRespondedTo = counts[1]
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
        rsp.Status = 0xFF00
        (rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations,
         rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations) = counts
        message = getattr(dimse_messages, f"{kind}_RSP")()
        message.primitive_to_message(rsp)
        assert framing.pending_response_command(rsp) == encode(message.command_set, True, True)
    rsp.Status = 0x0000
    assert framing.pending_response_command(rsp) is None
    rsp.Status = 0xFF00
    rsp.Identifier = BytesIO(b"\x08\x00\x58\x11\x00\x00\x00\x00")
    assert framing.pending_response_command(rsp) is None


def _store_response_pdus(max_pdu: int = 0, **fields) -> list[bytes]:
    """The P-DATA-TF PDUs (bodies, after the 6-byte header) pynetdicom writes for a C-STORE-RSP."""
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    rsp = C_STORE()
    for name, value in fields.items():
        setattr(rsp, name, value)
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    pdus = []
    for primitive in message.encode_msg(1, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode()[6:])
    return pdus


@pytest.mark.parametrize("status, comment, offending", [
    (0x0000, None, None),
    (0xB000, "elements coerced", None),
    (0xA700, "disque plein", None),  # odd length: padded
    (0xC000, None, [0x00100020, 0x7FE00010]),
    (0x0122, "SOP class not supported", None),
])
def test_a_store_response_reads_as_pynetdicom_decodes_it(status, comment, offending):
    """Bad cases tried: a status read from the wrong element or byte order, an Error Comment with
    its padding, an Offending Element read element-first: the answer must be what pynetdicom
    decodes from the same PDU (its own encoder made it)."""
    fields = {"MessageIDBeingRespondedTo": 513, "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
              "AffectedSOPInstanceUID": "1.2.3.4.5", "Status": status}
    if comment:
        fields["ErrorComment"] = comment
    if offending:
        fields["OffendingElement"] = offending
    (pdu,) = _store_response_pdus(**fields)
    assert framing.parse_store_response(pdu) == (513, status, comment, offending)


def test_anything_but_one_whole_store_response_is_left_to_pynetdicom():
    """Bad cases tried: a C-CANCEL (or any other message) taken for the answer, a response split
    over several PDUs read from its first fragment, a truncated or garbled PDU: each is None, and
    the sender then gives the PDU to pynetdicom's DUL as it came."""
    from pynetdicom.dimse_messages import C_CANCEL_RQ
    from pynetdicom.dimse_primitives import C_CANCEL
    from pynetdicom.pdu import P_DATA_TF

    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 7
    message = C_CANCEL_RQ()
    message.primitive_to_message(cancel)
    (primitive,) = message.encode_msg(1, 0)
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    assert framing.parse_store_response(pdu.encode()[6:]) is None

    fields = {"MessageIDBeingRespondedTo": 1, "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
              "AffectedSOPInstanceUID": "1.2.3.4.5", "Status": 0, "ErrorComment": "x" * 60}
    fragments = _store_response_pdus(max_pdu=40, **fields)
    assert len(fragments) > 1
    assert all(framing.parse_store_response(f) is None for f in fragments)
    (whole,) = _store_response_pdus(**fields)
    assert framing.parse_store_response(whole[:-3]) is None  # truncated
    assert framing.parse_store_response(whole + b"\x00\x00\x00\x02\x01\x03") is None  # a second PDV
    assert framing.parse_store_response(b"\x00\x00") is None


@pytest.mark.parametrize("meta_end", [4000, 4090, 4094, 4096, 9000])
def test_the_dataset_is_found_after_a_long_meta_group(tmp_path, meta_end):
    """Bad case tried: a file meta group (a long Private Information value) ending near the end of
    the sender's first 4 KiB read, exactly at it, or after it: the dataset must start after the
    whole group (the meta group of the files we store is a few hundred bytes; other files may differ)."""
    from tests.helpers import make_ct

    def written(padding: int) -> bytes:
        ds = make_ct(sop_uid="1.2.826.0.1.3680043.8.498.1", study_uid="1.2.3", series_uid="1.2.3.4")
        ds.file_meta.PrivateInformationCreatorUID = "1.2.3"
        ds.file_meta.PrivateInformation = b"x" * padding
        path = tmp_path / "long-meta.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path.read_bytes()

    base = dataset_offset(written(100)) - 100
    data = written(meta_end - base - (meta_end - base) % 2)
    expected = dataset_offset(data)
    assert abs(expected - meta_end) <= 1
    path = tmp_path / "long-meta.dcm"
    with open(path, "rb") as f:
        length = outgoing.StoredFile(lambda: open(path, "rb")).dataset(f)
        assert (f.tell(), length) == (expected, len(data) - expected)
