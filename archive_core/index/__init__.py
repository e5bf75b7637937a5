"""The index of what the archive holds: patients, studies, series and instances."""
