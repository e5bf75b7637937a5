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

from archive_core.net import scu, syntaxes

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
        got = _written(scu.convert(data, stored, target), target)
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
    got = scu.convert(data, stored, ELE)
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
    assert scu.transfer_plan("1.2.840.10008.5.1.4.1.1.2", stored, contexts) == plan


def test_a_lossy_object_keeps_its_lossy_history_and_gets_what_it_lacked():
    """JPEG2000.dcm says 01 and ratio 2097 but no method: kept, and the method is added."""
    data, stored = _part10("JPEG2000.dcm")
    got = scu.convert(data, stored, ELE)
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
    got = scu.convert(buf.getvalue(), stored, ELE)
    assert (got.LossyImageCompression, got.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    assert float(got.LossyImageCompressionRatio) > 1


def test_a_lossless_conversion_adds_no_lossy_history():
    data, stored = _part10("MR_small_RLE.dcm")
    assert "LossyImageCompression" not in scu.convert(data, stored, ELE)


def test_a_stored_object_is_never_encoded_as_its_two_uids():
    """Bad case tried: the reported 476-byte objects. A StoredDataset given to pynetdicom's own
    encoder (or the server's fast one) is refused instead of encoded."""
    import logging

    from pynetdicom.dsutils import encode

    from archive_core.net.encoding import encode as fast_encode

    stored = scu.StoredDataset.of(b"\x08\x00", sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4",
                                  transfer_syntax_uid=ELE)
    logging.disable(logging.CRITICAL)
    try:
        assert encode(stored, False, True) is None
        assert fast_encode(stored, False, True) is None
    finally:
        logging.disable(logging.NOTSET)


def test_the_pynetdicom_internals_the_sender_uses_exist():
    """scu.send_c_store follows Association.send_c_store's steps (pynetdicom pinned in requirements.txt)."""
    from pynetdicom.association import Association

    for name in ("_get_valid_context", "_check_received_status", "_handle_no_response", "send_c_store"):
        assert callable(getattr(Association, name))
    assoc = Association.__new__(Association)
    Association.__init__(assoc, __import__("pynetdicom").AE(), "requestor")
    assert hasattr(assoc, "_reactor_checkpoint") and hasattr(assoc, "_is_paused")
    assert hasattr(assoc.dimse, "msg_queue") and callable(assoc.acse.is_aborted)
