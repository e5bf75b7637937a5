"""C-FIND corrections (issue 9, section 6), each reproduced with DCMTK findscu against the running SCP."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.helpers import make_ct, require_tool, tool_env
from tests.integration.test_query_retrieve import CALLING, TIMEOUT_S, _register, _store

YAMADA = "1.2.826.0.1.3680043.8.498.9101"
DUPONT = "1.2.826.0.1.3680043.8.498.9102"
OLD = "1.2.826.0.1.3680043.8.498.9103"


@pytest.fixture
def stored(scp, archive):
    """A Japanese name in three component groups, a French one, and a study dated the ACR-NEMA way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1997.04.24 is not a DICOM date: pydicom warns, the archive stores it
        objects = [
            make_ct(patient_id="JP1", patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう", charset="ISO_IR 192",
                    study_uid=YAMADA, series_uid=YAMADA + ".1", sop_uid=YAMADA + ".1.1", rows=16,
                    NumberOfFrames=1, InstanceNumber=1),
            make_ct(patient_id="FR1", patient_name="Dupont^Jean", study_uid=DUPONT, series_uid=DUPONT + ".1",
                    sop_uid=DUPONT + ".1.1", InstanceNumber=1),
            make_ct(patient_id="OLD1", patient_name="Ancien^Paul", study_uid=OLD, series_uid=OLD + ".1",
                    sop_uid=OLD + ".1.1", study_date="1997.04.24", InstanceNumber=1),
        ]
    _store(scp.port, objects)
    _register(archive, CALLING)


def findscu(port: int, tmp_path: Path, *keys: str, level: str = "STUDY") -> tuple[list[Dataset], str]:
    """Answers and findscu's debug log (final status, Error Comment) for a Study Root query."""
    tool = require_tool("findscu")
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    out.mkdir()
    args = ["-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    run = subprocess.run([tool, "-d", "-S", "-aet", CALLING, "-aec", "ARCHIVAGE", "-X", "-od", str(out), *args,
                          "127.0.0.1", str(port)], capture_output=True, text=True, timeout=TIMEOUT_S, env=tool_env())
    assert run.returncode == 0, run.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], run.stdout + run.stderr


def test_ideographic_group_alone_matches_that_group(stored, scp, tmp_path):
    """Bad input: PatientName=山田* (ISO_IR 192), alone or as "=山田*", matched every patient."""
    for name in ("=山田*", "山田*"):
        answers, _log = findscu(scp.port, tmp_path, "SpecificCharacterSet=ISO_IR 192", f"PatientName={name}",
                                "StudyInstanceUID")
        assert [a.StudyInstanceUID for a in answers] == [YAMADA], name
        assert str(answers[0].PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_date_wildcard_and_malformed_range_answer_a900_with_a_comment(stored, scp, tmp_path):
    """Bad input: StudyDate=2024* (wildcards are not DA matching) and 20241301- (month 13)."""
    for value, comment in (("2024*", "no wildcards in a date"), ("20241301-", "not a date")):
        answers, log = findscu(scp.port, tmp_path, f"StudyDate={value}", "StudyInstanceUID")
        assert answers == []
        assert "DIMSE Status                  : 0xa900" in log, log
        assert "ErrorComment" in log and comment in log, log


def test_acr_nema_date_matches_its_dicom_form(stored, scp, tmp_path):
    """Bad input: 1997.04.24 was indexed as "1997.04." and no date query found it."""
    answers, _log = findscu(scp.port, tmp_path, "StudyDate=19970101-19971231", "StudyInstanceUID")
    assert [(a.StudyInstanceUID, a.StudyDate) for a in answers] == [(OLD, "19970424")]


def test_sequence_key_with_an_empty_item_is_answered_pending(stored, scp, tmp_path):
    """Bad input: ProcedureCodeSequence with one item of empty keys answered 0xFF01 (optional keys not supported)."""
    answers, log = findscu(scp.port, tmp_path, f"StudyInstanceUID={DUPONT}",
                           "ProcedureCodeSequence[0].CodeValue", "ProcedureCodeSequence[0].CodingSchemeDesignator")
    assert [a.StudyInstanceUID for a in answers] == [DUPONT]
    assert "ProcedureCodeSequence" in answers[0]
    assert "DIMSE Status                  : 0xff00" in log and "0xff01" not in log, log


def test_rows_columns_and_frames_at_image_level(stored, scp, tmp_path):
    """Bad input: viewers ask Rows/Columns/NumberOfFrames at IMAGE level; they came back empty."""
    answers, _log = findscu(scp.port, tmp_path, f"StudyInstanceUID={YAMADA}", f"SeriesInstanceUID={YAMADA}.1",
                            "SOPInstanceUID", "Rows", "Columns", "NumberOfFrames", level="IMAGE")
    assert [(a.Rows, a.Columns, a.NumberOfFrames) for a in answers] == [(16, 16, 1)]
