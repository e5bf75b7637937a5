"""Every back-office model, imported in one place for the migrations and the app."""

from backoffice.auth.models import ApiToken, User  # noqa: F401
