"""The DICOM network side: the SCP that modalities and workstations talk to, and our SCU."""
