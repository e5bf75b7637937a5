"""What every billing page module shares: the blueprint and its one error handler, the labels and
template filters, and the form fields as the desk types them (amounts, rates, dates)."""

from __future__ import annotations

from datetime import date

from flask import Blueprint, Response, request, url_for
from flask_babel import lazy_gettext as _l

from archive_core.values import person_name
from backoffice.billing import documents, money
from backoffice.billing import services as S
from backoffice.billing.errors import TABLE
from backoffice.errors import answer_domain_errors
from backoffice.i18n import locale_name

bp = Blueprint("billing", __name__, url_prefix="/billing", cli_group="billing")

DESK = ("front_desk", "manager")
MANAGER = ("manager",)
PAGE_SIZE = 100
STATE_LABELS = {"to_ask": _l("à demander"), "accepted": _l("accepté"), "refused": _l("refusé"),
                "invoiced": _l("facturé"), "paid": _l("payé"), "free": _l("pris en charge (sans frais)")}
# The pages' labels follow the interface language; the PDFs keep documents' French ones.
INVOICE_STATUS = {"issued": _l("émise"), "partially_paid": _l("partiellement payée"), "paid": _l("payée"),
                  "credited": _l("annulée par avoir")}
CLAIM_LABELS = {"to_send": _l("à envoyer"), "sent": _l("envoyée"), "paid": _l("payée"), "rejected": _l("rejetée"),
                "cancelled": _l("annulée")}
METHOD_LABELS = {"cash": _l("espèces"), "card": _l("carte bancaire"), "cheque": _l("chèque"),
                 "transfer": _l("virement")}


CLOSING_KINDS = {"day": _l("jour"), "month": _l("mois"), "year": _l("année")}


@bp.app_template_filter("method_totals")
def _method_totals(totals_json: str | None) -> str:
    """A closing's totals per payment method as the desk reads them: "carte bancaire : 6,50 € · espèces : 3,00 €"."""
    import json

    try:
        totals = json.loads(totals_json or "{}")
    except ValueError:
        return ""
    return " · ".join(f"{METHOD_LABELS.get(method, method)} : {euros(cents)}"
                      for method, cents in sorted(totals.items()) if isinstance(cents, int))


@bp.app_template_filter("closing_kind")
def _closing_kind(kind: str) -> str:
    return str(CLOSING_KINDS.get(kind, kind))


@bp.app_template_filter("euros")
def euros(cents: int | None) -> str:
    return documents.euros(cents or 0, locale=locale_name())


@bp.app_template_filter("fr_date")
def fr_date(value) -> str:
    return documents.french_date(value, locale=locale_name())


@bp.app_template_filter("fr_datetime")
def fr_datetime(value) -> str:
    return documents.french_datetime(value, locale=locale_name())


@bp.app_template_filter("percent")
def _percent_filter(bp: int | None) -> str:
    return documents.percent(bp or 0, locale=locale_name())


@bp.app_template_filter("percent_input")
def _percent_input_filter(bp: int | None) -> str:
    return documents.percent_input(bp or 0, locale=locale_name())


@bp.app_template_filter("person")
def _person(value: str | None) -> str:
    return person_name(value, as_stored=True)


# -- errors: one handler for every billing page ------------------------------------------------------

# Where a refused form post goes back to when it came from no page of ours (else the page it came from).
BACK = {"billing.checkin": "billing.checkin", "billing.closing": "billing.closing",
        "billing.remittance": "billing.closing", "billing.tariffs": "billing.tariffs",
        "billing.correct_tariff": "billing.tariffs", "billing.withdraw_tariff": "billing.tariffs",
        "billing.mapping": "billing.mapping", "billing.insurers": "billing.insurers",
        "billing.insurer_edit": "billing.insurers", "billing.insurer_retire": "billing.insurers",
        "billing.claims": "billing.claims", "billing.closings": "billing.closings"}

# The pages speak the desk's language (billing/errors.py); the API keeps the services' (English) messages.
answer_domain_errors(bp, S.BillingError, TABLE, back=lambda: url_for(BACK.get(request.endpoint, "billing.today")))


def pdf_response(data: bytes, filename: str, *, attachment: bool = False, no_store: bool = True) -> Response:
    headers = {"Content-Disposition": f'{"attachment" if attachment else "inline"}; filename="{filename}"'}
    if no_store:
        headers["Cache-Control"] = "no-store"
    return Response(data, mimetype="application/pdf", headers=headers)


# -- form fields as the desk types them ----------------------------------------------------------------


def form_int(name: str, default: int | None = None) -> int:
    try:
        return int(request.form.get(name, default if default is not None else ""))
    except ValueError:
        raise S.Invalid(f"{name} must be an integer", code="bad_number", field=name) from None


def closing_day(text: str):
    """The closed day for a message ("1 décembre 2026"); the text itself if it is not a date."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def form_percent(name: str) -> int:
    """A rate typed in percent ("50", "50 %", "33,5 %") in basis points, exactly (money.parse_percent)."""
    try:
        return money.parse_percent(request.form.get(name))
    except money.PercentError as exc:
        raise S.Invalid(f"{name}: not a rate in percent ({exc.reason})", code=f"percent_{exc.reason}") from None


def form_date(name: str, *, optional: bool = False) -> date | None:
    raw = (request.form.get(name) or "").strip()
    if not raw and optional:
        return None
    return S.parse_date(raw, name)


def form_cents(name: str) -> int:
    """A French amount typed at the desk ("4,50") in cents, without floats."""
    raw = (request.form.get(name) or "").strip().replace("€", "").replace(" ", "").replace(",", ".")
    whole, _sep, frac = raw.partition(".")
    if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 2)):
        raise S.Invalid(f"{name} is not an amount", code="bad_amount")
    return int(whole) * 100 + int((frac + "00")[:2])
