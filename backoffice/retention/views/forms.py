"""The retention pages' forms."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, HiddenField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length


class HoldForm(FlaskForm):
    patient_id = StringField(_l("Identifiant patient"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif (réclamation, enquête…)"), validators=[DataRequired()])


class DeathForm(FlaskForm):
    patient_id = StringField(_l("Identifiant patient"), validators=[DataRequired(), Length(max=64)])
    death_date = DateField(_l("Date du décès"), validators=[DataRequired()])
    # Set only by the confirmation step that follows a date ending retention sooner.
    confirm_shortening = HiddenField(default="")


class ReasonForm(FlaskForm):
    reason = TextAreaField(_l("Motif de la décision"), validators=[DataRequired()])


class ConfirmForm(FlaskForm):
    """Only the CSRF token."""


class ExecuteForm(FlaskForm):
    confirmed = BooleanField(_l("Je confirme la destruction définitive des dossiers et examens listés ci-dessus"))


class MoveForm(FlaskForm):
    study_uid = StringField(_l("UID de l'examen"), validators=[DataRequired(), Length(max=64)])
    patient_id = StringField(_l("Rattacher au patient"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif"), validators=[DataRequired()])


class MergeForm(FlaskForm):
    source = StringField(_l("Patient en double (disparaît)"), validators=[DataRequired(), Length(max=64)])
    target = StringField(_l("Patient conservé"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif"), validators=[DataRequired()])


class DeletionForm(FlaskForm):
    study_uid = StringField(_l("UID de l'examen envoyé par erreur"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif"), validators=[DataRequired()])
