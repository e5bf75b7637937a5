"""The paper reproduction: an A4 PDF with the practice header, patient, exam, signed report and key images."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from flask import render_template
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade, RenderError, RenderParams, StudyDetail
from backoffice.radiology import services
from backoffice.patients.printing import printed_ins
from backoffice.pdf import html_to_pdf
from backoffice.practice import practice_identity

LAYOUTS = (1, 2, 4, 6)
DEFAULT_IMAGES = 6
# Longest side in pixels by layout: about 200 dpi at the printed size.
PRINT_SIZE = {1: 1400, 2: 1100, 4: 800, 6: 700}


@dataclass(frozen=True)
class PrintedImage:
    data_uri: str
    caption: str


def chosen_images(session: Session, facade: ArchiveFacade, detail: StudyDetail) -> list[tuple]:
    """(SOP Instance UID, frame, centre, width) of the key images, or the first image of each series (up to six)."""
    keys = services.key_images(session, detail.study.study_uid)
    if keys:
        return [(k.sop_instance_uid, k.frame, k.window_center, k.window_width) for k in keys]
    firsts = [(s.first_sop_uid, 0, None, None) for s in detail.series if s.first_is_image and s.first_sop_uid]
    return firsts[:DEFAULT_IMAGES]


def build_reproduction(session: Session, facade: ArchiveFacade, study_uid: str, *, per_page: int = 4) -> bytes:
    if per_page not in LAYOUTS:
        raise services.RadiologyError(f"images per page: {', '.join(map(str, LAYOUTS))}", code="layout",
                                     layouts=", ".join(map(str, LAYOUTS)))
    detail = facade.study_detail(session, study_uid)
    images: list[PrintedImage] = []
    size = PRINT_SIZE[per_page]
    for sop_uid, frame, wc, ww in chosen_images(session, facade, detail):
        params = RenderParams(frame=frame, window_center=wc, window_width=ww, size=size, fmt="jpeg", quality=92)
        try:
            data = facade.render_instance(session, sop_uid, params)
        except RenderError:
            continue
        window = f" — F {wc:g} / L {ww:g}" if wc is not None and ww is not None else ""
        caption = f"Image {len(images) + 1}{window}"
        images.append(PrintedImage("data:image/jpeg;base64," + base64.b64encode(data).decode(), caption))
    pages = [images[i : i + per_page] for i in range(0, len(images), per_page)]
    html = render_template(
        "radiology/reproduction.html",
        document=True,  # a French document whatever the interface language
        practice=practice_identity(),
        study=detail.study,
        detail=detail,
        report=services.signed_report(session, study_uid),
        ins=printed_ins(session, detail.study.patient_id),
        documents=facade.study_documents(session, study_uid),
        pages=pages,
        per_page=per_page,
    )
    return html_to_pdf(html)
