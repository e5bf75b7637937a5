"""The WSGI entry point: the only module that builds an app at import."""

from backoffice import create_app

app = create_app()
