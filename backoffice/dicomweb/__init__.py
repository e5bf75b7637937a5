"""DICOMweb (PS3.18) under ``/dicom-web``: QIDO-RS searches and WADO-RS retrieval.

Who may call it: bearer tokens (the ``/api/v1`` tokens) and signed-in sessions of the
radiologist and manager roles (:data:`ROLES`), and for reading with a signed-in session the front desk's too
(:data:`READ_ROLES`: the study viewer reads through DICOMweb). Without credentials the answer is 401 (a viewer is
no browser to redirect to a login page). Every request is one audit event, whatever it returns.

A share link opens DICOMweb too, for its one study: the browser session that unlocked the link with
its one-time code (``/share/<token>``, the same two factors as the shared viewer) may read that study,
and the patient's earlier studies when the link was made "with priors" (QIDO-RS answers only it, WADO-RS/WADO-URI of another study are 404 as if unknown, STOW-RS is 403).
Once the link is revoked, expired or locked, the session gets 401. Audited as ``share:<link id>``.
The work is in :mod:`archive_core.dicomweb`, reached through the facade.
"""

from __future__ import annotations

from backoffice.dicomweb.access import bp, wado_bp
from backoffice.dicomweb import qido, rendered, stow, wado  # noqa: F401,E402 (their routes join the blueprints)

__all__ = ["bp", "wado_bp"]
