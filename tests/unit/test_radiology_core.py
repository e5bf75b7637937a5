"""The radiology part of the facade: browsing, priors, rendering through the store, CD/USB media."""

from __future__ import annotations

import io
from pathlib import Path
import subprocess

import pydicom
import pydicom.fileset
import pytest
from sqlalchemy import select
from PIL import Image

from archive_core.api import ArchiveFacade
from archive_core.errors import NotFound
from archive_core.render import RenderParams
from tests.helpers import STORAGE_BACKENDS, require_tool, tool_env
from tests.radiology_support import make_history


@pytest.fixture
def facade(archive):
    return ArchiveFacade(archive)


@pytest.fixture
def session(facade):
    """The caller's session, as a request's (these tests only read after setting up)."""
    with facade.new_session() as s:
        yield s


@pytest.fixture
def history(archive):
    return make_history(archive)


def test_priors_newest_first_with_relevance(facade, history, session):
    priors = facade.prior_studies(session, history.current)
    assert [p.study_uid for p in priors] == [history.prior_us_abdomen, history.prior_ct_chest, history.prior_mr_chest]
    relevant = {p.study_uid: p.relevant for p in priors}
    assert relevant == {history.prior_us_abdomen: False, history.prior_ct_chest: True, history.prior_mr_chest: True}
    assert priors[1].study_date == "2023-01-10"
    assert priors[1].modalities == ("CT",) and priors[1].body_parts == ("CHEST",)


def test_priors_of_an_unknown_study(facade, session):
    with pytest.raises(NotFound):
        facade.prior_studies(session, "1.2.3.4")


@pytest.mark.parametrize(
    "criteria, expected",
    [
        ({"patient": "martin"}, ["current", "prior_us_abdomen", "prior_ct_chest", "prior_mr_chest"]),
        ({"patient": "élise"}, ["current", "prior_us_abdomen", "prior_ct_chest", "prior_mr_chest"]),
        ({"patient": "PAT-RAD-1", "modality": "MR"}, ["prior_mr_chest"]),
        ({"date_from": "2023-01-01", "date_to": "2023-12-31"}, ["prior_us_abdomen", "prior_ct_chest"]),
        ({"accession": "A2022"}, ["prior_mr_chest"]),
        ({"description": "thorax", "patient": "PAT-RAD-1"}, ["current", "prior_ct_chest", "prior_mr_chest"]),
        ({"patient": "autre"}, ["other_patient"]),
        ({"patient": "%"}, []),
    ],
)
def test_browse_studies(facade, history, criteria, expected, session):
    page = facade.browse_studies(session, **criteria)
    assert [p.study_uid for p in page.items] == [getattr(history, name) for name in expected]


def test_browse_pages(facade, history, session):
    first = facade.browse_studies(session, limit=2)
    second = facade.browse_studies(session, limit=2, offset=2)
    assert first.has_more and len(first.items) == 2
    assert first.items[0].study_uid == history.other_patient  # newest first
    assert {s.study_uid for s in first.items}.isdisjoint({s.study_uid for s in second.items})


def test_study_detail_lists_series_with_counts(facade, history, session):
    detail = facade.study_detail(session, history.current)
    assert [(s.series_number, s.num_instances) for s in detail.series] == [(1, 3), (2, 1)]
    assert detail.body_parts == ("CHEST",) and detail.study.patient_name == "Martin^Élise"


@STORAGE_BACKENDS
def test_render_instance_reads_the_store_and_caches(facade, history, settings, session):
    series = facade.study_detail(session, history.current).series[0]
    refs = facade.series_instances(session, series.series_uid)
    assert [r.instance_number for r in refs] == [1, 2, 3]
    png = facade.render_instance(session, refs[0].sop_instance_uid, RenderParams(size=16))
    assert Image.open(io.BytesIO(png)).size == (16, 16)
    cached = list((settings.instance_path / "cache" / "render").rglob("*.png"))
    assert len(cached) == 1
    assert facade.render_instance(session, refs[0].sop_instance_uid, RenderParams(size=16)) == png


@STORAGE_BACKENDS
def test_media_file_set_reads_back(facade, history, tmp_path, session):
    report = facade.write_media(session, [history.current, history.prior_us_abdomen], tmp_path / "cd",
                                practice={"PRACTICE_NAME": "Cabinet de radiologie du Parc"})
    root = tmp_path / "cd"
    assert report.instances == 5 and report.converted == 1  # the implicit-VR ultrasound
    fs = pydicom.fileset.FileSet(root / "DICOMDIR")
    fs._stage["t"].cleanup()  # FileSet never removes its staging folder itself
    assert sorted(fs.find_values("StudyInstanceUID")) == sorted([history.current, history.prior_us_abdomen])
    for instance in fs:
        assert all(len(part) <= 8 and part == part.upper() for part in Path(instance.FileID).parts)
        ds = instance.load()
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    study_records = [r for r in pydicom.dcmread(root / "DICOMDIR").DirectoryRecordSequence
                     if r.DirectoryRecordType == "STUDY"]
    us_record = next(r for r in study_records if r.StudyInstanceUID == history.prior_us_abdomen)
    assert us_record.StudyID == "A2023B"  # filled (accession) although the object had an empty Study ID
    readme = (root / "README.TXT").read_text("ascii")
    assert "Cabinet de radiologie du Parc" in readme and "MARTIN Elise" in readme and "DICOM" in readme
    assert (root / "INDEX.HTM").exists() and len(list((root / "IHE_PDI").glob("*.JPG"))) == 3


def test_media_dicomdir_passes_dcmdump(facade, history, tmp_path, session):
    dcmdump = require_tool("dcmdump")
    facade.write_media(session, [history.current], tmp_path / "cd", practice={})
    out = subprocess.run([dcmdump, str(tmp_path / "cd" / "DICOMDIR")], capture_output=True, text=True, errors="replace",
                         env=tool_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('(0004,1430) CS [IMAGE') == 4
    assert "PATIENT" in out.stdout and "STUDY" in out.stdout and "SERIES" in out.stdout
    assert "à configurer" not in (tmp_path / "cd" / "README.TXT").read_text("ascii")  # ASCII: "a configurer"
    assert "a configurer" in (tmp_path / "cd" / "README.TXT").read_text("ascii")


def test_the_core_radiology_modules_pull_in_no_web_pieces():
    import sys

    code = ("import sys, archive_core.api, archive_core.render, archive_core.media, archive_core.net.push; "
            "print(sorted(m for m in ('flask', 'backoffice', 'weasyprint', 'apscheduler') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@STORAGE_BACKENDS
def test_tombstoned_studies_disappear_and_archive_tier_images_still_render(facade, history):
    from archive_core.api import utcnow
    from archive_core.index.models import Patient

    with facade.new_session() as s:
        mr_sop = facade.study_detail(s, history.prior_mr_chest).series[0].first_sop_uid
        facade.render_instance(s, mr_sop, RenderParams(size=8))  # in the render cache now
    cache_root = facade.settings.instance_path / "cache" / "render"
    assert len(list(cache_root.rglob("*.png"))) == 1
    with facade.new_session(write=True) as s:
        facade.tombstone_study(s, history.prior_mr_chest, at=utcnow())
        s.commit()
    with facade.new_session() as s, pytest.raises(NotFound):
        facade.render_instance(s, mr_sop, RenderParams(size=8))  # never served from the cache once purged
    facade.delete_tombstoned_files([mr_sop])
    assert list(cache_root.rglob("*.png")) == []
    with facade.new_session() as s:
        assert history.prior_mr_chest not in {p.study_uid for p in facade.prior_studies(s, history.current)}
        assert history.prior_mr_chest not in {st.study_uid for st in facade.browse_studies(s, patient="martin").items}
        with pytest.raises(NotFound):
            facade.study_detail(s, history.prior_mr_chest)

    with facade.new_session() as s:
        patient_pk = s.scalar(select(Patient.id).where(Patient.patient_id == history.patient_id))
    facade.move_patient_to_archive(patient_pk)
    with facade.new_session() as s:
        sop = facade.study_detail(s, history.current).series[0].first_sop_uid
        assert Image.open(io.BytesIO(facade.render_instance(s, sop, RenderParams(size=8)))).size == (8, 8)


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_media_decompresses_to_explicit_little_endian(facade, archive, tmp_path, name, session):
    import numpy as np
    from pydicom.data import get_testdata_file

    from tests.radiology_support import store

    original = pydicom.dcmread(get_testdata_file(name))
    store(archive, [original])
    report = facade.write_media(session, [original.StudyInstanceUID], tmp_path / "cd", practice={})
    assert (report.instances, report.converted, report.kept_compressed) == (1, 1, 0)
    dicomdir = pydicom.dcmread(tmp_path / "cd" / "DICOMDIR")
    image = next(r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE")
    copy = pydicom.dcmread(tmp_path / "cd" / Path(*image.ReferencedFileID))
    assert copy.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(copy.pixel_array, pydicom.dcmread(get_testdata_file(name)).pixel_array)
