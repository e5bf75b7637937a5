"""The home page: what the signed-in user can do, by role."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required

from backoffice.extensions import facade

bp = Blueprint("home", __name__)


@bp.route("/")
@login_required
def index():
    return render_template("home/index.html", user=current_user, stats=facade().stats())
