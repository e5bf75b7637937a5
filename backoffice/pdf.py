"""HTML to PDF (WeasyPrint) with embedded resources only: documents never fetch a URL nor read a file of ours.

Patient names, report text and practice settings end up in the HTML; an ``<img src="http://...">`` or a
``file:///etc/passwd`` stylesheet in them must not make the server send a request or read a file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# The files we ship that a document may use (none today: styles are inline, images are data: URIs).
SHIPPED = (ROOT / "templates", ROOT / "backoffice" / "static")


class ExternalResourceRefused(ValueError):
    """A document asked for a resource that is neither a ``data:`` URI nor one of the shipped files."""


def allowed(url: str) -> bool:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "data":
        return True
    if scheme == "file" and not parts.netloc:
        path = Path(unquote(parts.path)).resolve()
        return any(path.is_relative_to(root) for root in SHIPPED)
    return False


def _fetcher():
    from weasyprint.urls import URLFetcher

    class EmbeddedOnly(URLFetcher):
        def __init__(self) -> None:
            super().__init__(timeout=1, allowed_protocols=("data", "file"), allow_redirects=False)

        def fetch(self, url, headers=None):
            if not allowed(url):
                log.warning("document resource refused (%s:)", urlsplit(url).scheme or "relative")
                raise ExternalResourceRefused("only embedded resources are allowed in documents")
            return super().fetch(url, headers)

    return EmbeddedOnly()


def html_to_pdf(html: str) -> bytes:
    """The PDF of *html*; relative URLs resolve against the shipped templates, anything else is refused."""
    from weasyprint import HTML

    return HTML(string=html, base_url=str(SHIPPED[0]) + "/", url_fetcher=_fetcher()).write_pdf()
