"""Check-in at the desk: find the patient, never make a second one from a typo, create (or reuse) the
exam group, and put the scheduled procedure step on the modalities' worklist (through the facade).

Called by the check-in page and by ``POST /api/v1/exam-groups``, inside the request's transaction.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date, datetime, time

from sqlalchemy import func, or_, select

from archive_core.api import DuplicateAccession, PatientMatch, ScheduledStep, WorklistError, fold_text
from archive_core.values import da_to_iso, paris_time, person_name, utcnow
from backoffice.billing import services as S
from backoffice.billing.models import ExamGroup, ExamGroupMapping
from backoffice.extensions import db, facade

# Exam groups without a modality of their own in the mapping (``autre``, the flat-rate ones).
OTHER_MODALITY = "OT"
MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "RF", "XA", "OT")
# How alike two folded names must be (difflib ratio) to be offered as the same person.
NEAR = 0.8
_UPPER_WORD = re.compile(r"^[^a-zà-ÿ]*[A-ZÀ-Þ][^a-zà-ÿ]*$")


class NearMatch(S.Conflict):
    """A new Patient ID whose name (and birth date) is that of a patient already known."""

    def __init__(self, candidates: list["Candidate"]) -> None:
        super().__init__("a patient with a close name is already known: choose them, or confirm a new patient",
                         code="near_match")
        self.candidates = candidates


@dataclass(frozen=True)
class Candidate:
    patient_id: str
    name: str  # as people read it
    birth_date: str | None  # ISO 8601


@dataclass(frozen=True)
class CheckIn:
    group: ExamGroup
    created: bool
    step: ScheduledStep | None


def parse_time(value: str | None) -> time | None:
    """``14:30`` (a time input's value) as a time; None when empty."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        return time.fromisoformat(value).replace(second=0, microsecond=0, tzinfo=None)
    except ValueError:
        raise S.Invalid("scheduled_time must be a time HH:MM", code="scheduled_time") from None


def dicom_person_name(typed: str | None) -> str | None:
    """What a person types ("DUPRÉ Jean-François", "Le Gall Anne", "MARTIN") as DICOM PN
    ``FAMILY^Given``: the leading words in capitals are the family name, else the first word is;
    the family name is stored in capitals. A value already in PN form (with ``^``) is kept."""
    text = " ".join((typed or "").split())
    if not text:
        return None
    if "^" in text:
        return text
    words = text.split(" ")
    capitals = 0
    while capitals < len(words) and _UPPER_WORD.match(words[capitals]) and len(words[capitals]) > 1:
        capitals += 1
    if capitals == 0 or capitals == len(words) and len(words) > 1:
        capitals = 1  # no word in capitals, or all of them: the first is the family name
    family, given = " ".join(words[:capitals]), " ".join(words[capitals:])
    if given.islower():
        given = given.title()  # "dupré jean-françois" -> DUPRÉ^Jean-François
    return f"{family.upper()}^{given}" if given else family.upper()


def _fold(name: str | None) -> str:
    return " ".join((fold_text((name or "").replace("^", " ")) or "").split())


def _alike(a: str | None, b: str | None) -> bool:
    fa, fb = _fold(a), _fold(b)
    if not fa or not fb:
        return False
    if fa == fb or difflib.SequenceMatcher(None, fa, fb).ratio() >= NEAR:
        return True
    # Given and family names swapped ("Jean DUPRÉ" typed as a new patient "DUPRÉ Jean").
    return difflib.SequenceMatcher(None, " ".join(sorted(fa.split())), " ".join(sorted(fb.split()))).ratio() >= NEAR


def near_matches(pn: str | None, birth_date: str | None, *, exclude_id: str) -> list[Candidate]:
    """Known patients (archive, or checked in before any image) a typed name and birth date may be."""
    if not pn:
        return []
    session = db()
    found: dict[str, Candidate] = {}
    words = _fold(pn).split()
    probes = set(words) | {w[:3] for w in words if len(w) >= 3}
    if birth_date:
        probes.add(f"{birth_date[6:]}/{birth_date[4:6]}/{birth_date[:4]}")
    for probe in probes:
        for m in facade().search_patients(session, probe, limit=50).items:
            if m.patient_id != exclude_id and _alike(pn, m.dicom_name) and (
                    not birth_date or not m.birth_date or m.birth_date.replace("-", "") == birth_date):
                found.setdefault(m.patient_id, Candidate(m.patient_id, m.name, m.birth_date))
    # Checked in earlier, no image yet: only the exam groups know them.
    prefix = words[0][:3] if words else ""
    query = select(ExamGroup.patient_id, ExamGroup.patient_name, ExamGroup.patient_birth_date).where(
        ExamGroup.patient_id != exclude_id, ExamGroup.patient_name.is_not(None))
    conditions = [func.upper(ExamGroup.patient_name).like(f"{prefix}%")] if prefix else []
    if birth_date:
        conditions.append(ExamGroup.patient_birth_date == birth_date)
    if conditions:
        for pid, name, born in db().execute(query.where(or_(*conditions)).limit(200)):
            if pid not in found and _alike(pn, name) and (not birth_date or not born or born == birth_date):
                found[pid] = Candidate(pid, person_name(name), da_to_iso(born))
    return sorted(found.values(), key=lambda c: (c.name, c.patient_id))[:10]


def modality_for(exam_group: str) -> str:
    """The modality that performs an exam group: its first plain mapping, else OT."""
    return db().scalar(select(ExamGroupMapping.modality).where(
        ExamGroupMapping.exam_group == exam_group, ExamGroupMapping.description_contains.is_(None))
        .order_by(ExamGroupMapping.id).limit(1)) or OTHER_MODALITY


def _known(patient_id: str) -> tuple[PatientMatch | None, ExamGroup | None]:
    archived = facade().find_patient(db(), patient_id)
    earlier = db().scalar(select(ExamGroup).where(ExamGroup.patient_id == patient_id,
                                                  ExamGroup.patient_name.is_not(None))
                          .order_by(ExamGroup.id.desc()).limit(1))
    return archived, earlier


def check_in(*, patient_id: str, visit_date: date, exam_group: str, actor: str, patient_name: str | None = None,
             patient_birth_date: str | None = None, patient_sex: str | None = None,
             patient_address: str | None = None, accession_number: str | None = None, modality: str | None = None,
             station_ae_title: str | None = None, start_time: time | None = None,
             confirm_new_patient: bool = False) -> CheckIn:
    """Check a patient in for an exam group on a day.

    - A known Patient ID (archive or an earlier check-in) brings its name, birth date and sex:
      the ID alone is enough, and the invoice carries the name.
    - A new Patient ID with the name (and birth date) of a known patient raises :class:`NearMatch`
      unless *confirm_new_patient*: the desk chooses the known patient or says it is another one.
    - The same patient, day and exam group again returns the existing group (``created`` False).
    - A new group gets a scheduled procedure step on the worklist, its accession number generated
      (or the one typed, if new), which the modality's images then carry.
    """
    session = db()
    patient_id = (patient_id or "").strip()
    if not patient_id or len(patient_id) > 64:
        raise S.Invalid("patient_id is required (64 characters at most)", code="patient_required")
    pn = dicom_person_name(patient_name)
    archived, earlier = _known(patient_id)
    if pn and archived and archived.dicom_name and _fold(pn) == _fold(archived.dicom_name):
        pn = archived.dicom_name  # the name as the archive holds it, not as the form showed it
    if pn is None:
        pn = (archived.dicom_name if archived else None) or (earlier.patient_name if earlier else None)
    birth = patient_birth_date or (archived.birth_date.replace("-", "") if archived and archived.birth_date else None) \
        or (earlier.patient_birth_date if earlier else None)
    sex = patient_sex or (archived.sex if archived else None) or (earlier.patient_sex if earlier else None)
    if archived is None and earlier is None:
        if pn is None:
            raise S.Invalid("a new patient needs a name", code="patient_name_required")
        if not confirm_new_patient:
            candidates = near_matches(pn, birth, exclude_id=patient_id)
            if candidates:
                raise NearMatch(candidates)
    if S.tariff_for(session, exam_group, visit_date) is None:
        raise S.Invalid(f"unknown exam group {exam_group!r}", code="unknown_exam_group")
    existing = session.scalar(select(ExamGroup).where(
        ExamGroup.patient_id == patient_id, ExamGroup.visit_date == visit_date, ExamGroup.exam_group == exam_group))
    if existing is not None:
        steps = facade().procedure_steps(session, [existing.accession_number or ""])
        return CheckIn(existing, False, steps.get(existing.accession_number or ""))
    now = paris_time(utcnow())
    if start_time is None:
        start_time = now.time().replace(second=0, microsecond=0) if visit_date == now.date() else time(8, 0)
    try:
        step = facade().schedule_procedure_step(
            session, patient_id=patient_id, patient_name=pn, patient_birth_date=birth, patient_sex=sex,
            modality=(modality or "").strip().upper() or modality_for(exam_group),
            start=datetime.combine(visit_date, start_time), created_by=actor,
            station_ae_title=(station_ae_title or "").strip() or None,
            procedure_description=S.exam_group_labels(session).get(exam_group, exam_group),
            accession_number=accession_number)
    except DuplicateAccession:
        raise S.Conflict("this accession number is already used", code="accession_used") from None
    except WorklistError as exc:
        raise S.Invalid(str(exc)) from None
    group = S.create_exam_group(
        session, patient_id=patient_id, visit_date=visit_date, exam_group=exam_group, created_by=actor,
        patient_name=pn, patient_birth_date=birth, patient_sex=sex, patient_address=patient_address,
        accession_number=step.accession_number)
    return CheckIn(group, True, step)


def fill_identity(group: ExamGroup) -> None:
    """Give a nameless group the archive's identity of its patient (before an invoice snapshot)."""
    if group.patient_name:
        return
    archived, earlier = _known(group.patient_id)
    source_name = (archived.dicom_name if archived else None) or (earlier.patient_name if earlier else None)
    if source_name:
        group.patient_name = source_name
        group.patient_birth_date = group.patient_birth_date or (
            archived.birth_date.replace("-", "") if archived and archived.birth_date else
            (earlier.patient_birth_date if earlier else None))
