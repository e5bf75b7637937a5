"""Bad input on a page answers a clear 4xx page, never a 500: domain errors mapped once, at the edge."""

from __future__ import annotations

from flask import Flask, render_template, request
from werkzeug.routing import IntegerConverter
from flask_babel import gettext as _



INT64 = 2**63


def db_int(value: str) -> int:
    """A query argument as an integer a database column can hold (``type=db_int``: junk becomes the default)."""
    number = int(value)
    if not -INT64 <= number < INT64:
        raise ValueError("out of range")
    return number


class DatabaseIntConverter(IntegerConverter):
    """``<int:...>`` in a route: an id a database column can hold, else the route does not match (404)."""

    def __init__(self, map, *args, **kwargs) -> None:  # noqa: A002  (werkzeug's signature)
        kwargs.setdefault("max", INT64 - 1)
        super().__init__(map, *args, **kwargs)


def _status(exc: Exception) -> int:
    from backoffice.billing import services as billing

    table = {billing.NotFound: 404, billing.Conflict: 409, billing.Invalid: 400}
    return next((code for kind, code in table.items() if isinstance(exc, kind)), 400)


def error_page(status: int, detail: str = ""):
    messages = {
        400: _("La demande contient une valeur invalide (une date s'écrit AAAA-MM-JJ, un nombre en chiffres)."),
        404: _("Introuvable : cet enregistrement (facture, paiement, examen…) n'existe pas à cette adresse."),
        409: _("Impossible dans l'état actuel de cet enregistrement."),
    }
    return render_template("error.html", status=status, message=messages.get(status, messages[400]),
                           detail=detail), status


def init_app(app: Flask) -> None:
    from backoffice.billing import services as billing

    @app.errorhandler(billing.BillingError)
    def _billing_error(exc: billing.BillingError):
        # Pages only: the API's blueprint answers its own JSON first.
        from backoffice.extensions import db

        db().rollback()
        return error_page(_status(exc), exc.message)
