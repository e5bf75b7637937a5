"""The invoice-PDF renderer process: reads invoice ids on stdin, renders and stores each PDF once.

Started by the web process (documents.render_after_issue); it exits when its input closes.
"""

from __future__ import annotations

import json
import logging
import os
import sys

log = logging.getLogger("backoffice.billing.pdf_worker")


def main() -> None:
    try:
        os.nice(5)  # the desk's requests first
    except OSError:
        pass
    from backoffice import create_app
    from backoffice.billing.documents import invoice_pdf

    app = create_app(json.loads(os.environ["ARCHIVAGE_PDF_WORKER_CONFIG"]))
    new_session = app.extensions["archivage"].new_session
    with app.app_context():
        for line in sys.stdin:
            try:
                invoice_pdf(new_session, int(line))
            except Exception:
                log.exception("rendering invoice %s failed; it will be rendered on first print", line.strip())
    app.extensions["archivage"].archive.close()


if __name__ == "__main__":
    main()
