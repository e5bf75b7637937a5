"""The invoice list: the page and the API answer from one query (operations.list_invoices)."""

from __future__ import annotations

import re
from datetime import date, timedelta

from backoffice.billing import services as S


def test_page_and_api_list_one_patients_invoices_newest_first_in_the_same_pages(app, client):
    """101 invoices of patient A and 2 of patient B: both edges must show A's 101 and none of B's,
    newest first, 100 then 1 (bad input tried: another patient's invoices slipping into a filtered
    list, a page boundary that repeats or drops an invoice, the page and the API disagreeing)."""
    from backoffice.auth.services import create_token, create_user

    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        desk = create_user(s, "list_desk", role="front_desk", password="correct horse battery")
        token = create_token(s, desk.login)
        ids = {"A": [], "B": []}
        for patient, count in (("B", 1), ("A", 101), ("B", 1)):  # B on both sides of A
            for _ in range(count):
                visit = date(2026, 1, 1) + timedelta(days=len(ids[patient]))  # one radiology group a day
                group = S.create_exam_group(s, patient_id=f"LIST-{patient}", visit_date=visit,
                                            exam_group="radiologie", created_by="t", patient_name="Martin^Paul")
                ids[patient].append(S.issue_invoice(s, group.id, issued_by="t").id)
        s.commit()
        desk_id = desk.id
    newest_first = sorted(ids["A"], reverse=True)

    with client.session_transaction() as session:
        session["_user_id"] = str(desk_id)
        session["_fresh"] = True
    shown = []
    url = "/billing/invoices?patient_id=LIST-A"
    for _page in range(3):
        html = client.get(url).get_data(as_text=True)
        shown.append([int(i) for i in re.findall(r'href="/billing/invoices/(\d+)"', html)])
        more = re.search(r'href="(/billing/invoices\?[^"]*before=[^"]*)"', html)
        if not more:
            break
        url = more.group(1).replace("&amp;", "&")
    assert [len(p) for p in shown] == [100, 1]
    assert sum(shown, []) == newest_first

    headers = {"Authorization": f"Bearer {token}"}
    answered = []
    url = "/api/v1/invoices?patient_id=LIST-A"
    while url:
        body = client.get(url, headers=headers).get_json()
        answered.append([item["id"] for item in body["items"]])
        url = body.get("next")
    assert answered == shown
