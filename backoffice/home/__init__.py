"""The home page: what the signed-in user can do, by role."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.auth.models import ROLES
from backoffice.extensions import facade

bp = Blueprint("home", __name__)


@bp.route("/")
@roles_required(*ROLES)
def index():
    return render_template("home/index.html", user=current_user, stats=facade().stats())
