"""Archivage's DICOM archive: storage, index, DICOM services and the facade the back-office uses."""
