"""Billing's former single module, kept as one import for its many callers: each name lives in its job's module.

``base`` (errors, clock, input checks), ``tariffs``, ``groups`` (exam groups, consent), ``insurers``
(and memberships), ``numbering``, ``states`` (where an invoice stands), ``invoices`` (and credit notes),
``journal`` (the hash-chained payment journal, digests, verify), ``payments``, ``closings``, ``claims``.
New code imports the job's module; the desk's operations (audit included) are in ``operations``.
The clock is ``base.utcnow``: a test that sets the time patches it there (this module has no ``utcnow``).
"""

from __future__ import annotations

from archive_core.hashchain import GENESIS  # noqa: F401 -- callers read S.GENESIS
from backoffice.billing.models import Claim, ExamGroup, Invoice, Payment  # noqa: F401 -- callers read S.Invoice...

from backoffice.billing.base import (  # noqa: F401
    BillingError,
    NotFound,
    Conflict,
    Invalid,
    paris_today,
    format_euros,
    parse_date,
    check_int,
)
from backoffice.billing.tariffs import (  # noqa: F401
    MAX_FEE_CENTS,
    tariff_for,
    fee_for,
    exam_group_labels,
    GROUP_CODE_CHARS,
    set_tariff,
    tariff_fields,
    correct_tariff,
    withdraw_tariff,
)
from backoffice.billing.groups import (  # noqa: F401
    ANCILLARY_MODALITIES,
    FALLBACK_GROUP,
    group_for_study,
    create_exam_group,
    attach_studies,
    unattached,
    move_study,
    invoice_of_group,
    list_exam_groups,
    GroupState,
    group_state,
    group_states,
    record_consent,
)
from backoffice.billing.insurers import (  # noqa: F401
    create_insurer,
    INSURER_FIELDS,
    update_insurer,
    get_insurer,
    retire_insurer,
    add_membership,
    end_membership,
    membership_for,
    insurer_used_cents,
)
from backoffice.billing.numbering import (  # noqa: F401
    next_number,
)
from backoffice.billing.states import (  # noqa: F401
    InvoiceState,
    invoice_state,
    invoice_states,
    state_inputs,
    issued_state,
    state_of,
    patient_balance_cents,
    get_invoice,
)
from backoffice.billing.invoices import (  # noqa: F401
    SplitPreview,
    preview_split,
    issue_invoice,
    issue_credit_note,
    credit_notes_of,
)
from backoffice.billing.journal import (  # noqa: F401
    _payment_digest,
    lock_journal,
    append_payment,
    JournalReport,
    invoice_digest,
    credit_note_digest,
    journal_head,
    check_anchors,
    verify_journal,
    period_bounds,
    period_totals,
)
from backoffice.billing.payments import (  # noqa: F401
    record_payment,
    pay,
    refund,
)
from backoffice.billing.closings import (  # noqa: F401
    period_payments,
    get_closing,
    close_period,
)
from backoffice.billing.claims import (  # noqa: F401
    send_claims,
    settle_claim,
    outstanding_claims,
    create_remittance,
)
