"""Retention under French law: deaths, legal holds, tiers, approved purges, certificates, manager pages."""
