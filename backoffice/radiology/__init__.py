"""Radiology pages: study browser, study page, viewer, reports, key images, share links (blueprints in views.py)."""
