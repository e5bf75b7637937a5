"""Project tools run by hand or by make (not imported by the application)."""
