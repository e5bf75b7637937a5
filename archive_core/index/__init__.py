"""The index of what the archive holds: patients, studies, series and instances."""

# The patient search keeps PatientNameToken in step on every flush, in whichever process writes: its
# listener is registered here, where every use of the index models passes first (models.py cannot
# import it: patient_search imports the models).
from archive_core.index import patient_search as _patient_search  # noqa: F401
