"""The home page (what the signed-in user can do, by role) and the manager's dashboard."""

from __future__ import annotations

from datetime import timedelta

from babel.dates import format_date
from flask import Blueprint, current_app, render_template
from flask_babel import gettext as _
from flask_login import current_user

from archive_core.values import paris_midnight, parse_da
from backoffice.auth import roles_required
from backoffice.auth.models import ROLES
from backoffice.extensions import db, facade

bp = Blueprint("home", __name__)


@bp.route("/")
@roles_required(*ROLES)
def index():
    return render_template("home/index.html", user=current_user, stats=facade().stats(db()))


@bp.route("/dashboard")
@roles_required("manager")
def dashboard():
    """Charts of the practice: money, consent, insurer claims, studies, storage (inline SVG, server-side)."""
    from pathlib import Path

    from backoffice.billing.documents import euros
    from backoffice.home import figures as D
    from backoffice.home.charts import Series, bar_chart, line_chart
    from backoffice.i18n import locale_name
    from backoffice.retention.clock import today
    from backoffice.sizes import format_size

    day = today()
    locale = locale_name()
    french = locale.startswith("fr")
    memo = current_app.extensions.setdefault("dashboard_memo", D.Memo())
    archive = (day, facade().data_version(db()))
    money = memo.get("money", (day, D.money_version(db())), lambda: D.money_per_month(db(), day))
    month_labels = [format_date(m.month, "MMM yy", locale=locale) for m in money]
    consent = D.consent_per_group(db(), day)
    from backoffice.billing.services import exam_group_labels

    group_labels = exam_group_labels(db())
    claims = D.outstanding_claims(db())

    weeks = D.week_starts(day)
    per_day = memo.get("studies", archive, lambda: facade().studies_by_day_and_modalities(
        db(), weeks[0].strftime("%Y%m%d"), (weeks[-1] + timedelta(days=6)).strftime("%Y%m%d")))
    counts: dict[str, list[int]] = {}
    for study_date, modalities, n in per_day:
        day_of_study = parse_da(study_date)
        if day_of_study is None:
            continue
        week = (day_of_study - weeks[0]).days // 7
        for modality in sorted({m for m in modalities.split("\\") if m}) or ["?"]:
            counts.setdefault(modality, [0] * len(weeks))[week] += n
    week_labels = [format_date(w, "dd/MM" if french else "d MMM", locale=locale) for w in weeks]

    starts = D.month_starts(day)
    ends = [paris_midnight(s) for s in starts[1:]]
    per_tier, after = memo.get("storage", archive, lambda: facade().storage_history(
        db(), [*ends, paris_midnight(day - timedelta(days=D.RATE_DAYS))]))
    figures = D.storage(per_tier, [*after[:-1], 0], starts, after[-1], today=day,
                        free_bytes=D.disk_free_bytes(Path(current_app.instance_path)))

    cents = lambda v: euros(int(v), locale=locale)  # noqa: E731
    size = lambda v: format_size(int(v))  # noqa: E731
    whole = lambda v: str(int(v))  # noqa: E731
    charts = {
        "money": bar_chart("money", _("Honoraires facturés et encaissés par mois"), month_labels, [
            Series("invoiced", _("facturé"), [m.invoiced_cents for m in money]),
            Series("collected", _("encaissé"), [m.collected_cents for m in money])], fmt=cents),
        "consent": bar_chart("consent", _("Taux de consentement par groupe d'examens"),
                             [group_labels.get(c.exam_group, c.exam_group) for c in consent],
                             [Series("rate", _("accepté (%)"), [c.rate_percent or 0 for c in consent])],
                             fmt=lambda v: f"{int(v)} %"),
        "claims": bar_chart("claims", _("Créances des mutuelles non réglées"), [c.insurer for c in claims],
                            [Series("amount", _("montant dû"), [c.amount_cents for c in claims])], fmt=cents),
        "studies": bar_chart("studies", _("Examens par modalité et par semaine"), week_labels,
                             [Series(m, m, v) for m, v in sorted(counts.items())], fmt=whole, stacked=True,
                             integer=True),
        "storage": line_chart("storage", _("Stockage utilisé (fin de mois)"), month_labels,
                              [Series("total", _("total"), figures.total_at_month_end)], fmt=size),
    }
    return render_template("home/dashboard.html", today=day, charts=charts, money=money, month_labels=month_labels,
                           consent=consent, group_labels=group_labels, claims=claims, weeks=week_labels, counts=counts, storage=figures)
