"""Finding a patient and seeing everything the practice holds about them, on one page."""
