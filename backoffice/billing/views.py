"""The billing pages, one module per job on the one ``billing`` blueprint (backoffice/billing/web.py,
with its one error handler): the front desk's day and check-in (desk_views.py), invoices and payments
(invoice_views.py), closings, remittances, claims and exports with ``flask billing verify``
(closing_views.py), the manager's tariffs, mapping and insurers (manager_views.py).

A refused action (a :class:`~backoffice.billing.base.BillingError`) is answered once, by that handler:
the transaction rolled back, billing/errors.py's sentence flashed on the page the form came from (or the
error's status and sentence on a page of its own for a link, or to a script)."""

from __future__ import annotations

from backoffice.billing import closing_views, desk_views, invoice_views, manager_views  # noqa: F401 (routes)
from backoffice.billing.web import bp

__all__ = ["bp"]
