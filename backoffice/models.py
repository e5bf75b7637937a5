"""Every back-office model, imported in one place for the migrations and the app."""

from backoffice.auth.models import ApiToken, LoginThrottle, User, WebSession  # noqa: F401
from backoffice.billing.models import (  # noqa: F401,E402
    Claim, Closing, Consent, CreditNote, ExamGroup, ExamGroupMapping, ExamGroupStudy, Insurer,
    InvoiceDocument, Invoice, InvoiceLine, InvoiceStudy, Membership, NumberCounter, Payment, Remittance, RemittanceItem, Tariff,
)
from backoffice.retention.models import DeathRecord, LegalHold, PurgeBatch, PurgeItem  # noqa: F401
from backoffice.radiology.models import KeyImage, Report, SendJob, ShareLink  # noqa: F401
from backoffice.patients.models import PatientGuardian, PatientIns  # noqa: F401
