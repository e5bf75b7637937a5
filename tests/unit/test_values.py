"""archive_core.values: the one DA/TM/PN reader and the Paris calendar day, rule by rule.

The DA table holds what the two former parsers disagreed on: retention read ``20240115123`` and
``2024+1+5`` as dates, billing read ``20240115XYZ``; PS3.5 table 6.2-1 says a DA is eight digits
(the ACR-NEMA ``yyyy.mm.dd`` form still read, per its backward-compatibility note).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from archive_core.values import (
    as_utc,
    da_to_iso,
    format_da,
    normalize_da,
    normalize_tm,
    paris_day,
    paris_midnight,
    paris_time,
    parse_da,
    person_name,
    utcnow,
)


@pytest.mark.parametrize("value, expected", [
    ("20240115", date(2024, 1, 15)),
    ("20240229", date(2024, 2, 29)),        # leap day
    (" 20240115 ", date(2024, 1, 15)),      # padding spaces
    ("2024.01.15", date(2024, 1, 15)),      # ACR-NEMA form (PS3.5 6.2, note)
    ("20230229", None),                     # not a leap year
    ("20241301", None),                     # month 13
    ("20240100", None),                     # day 0
    ("00000101", None),                     # year 0
    ("2024-01-15", None),                   # ISO is not DA
    ("2024011", None),                      # seven digits
    ("2012", None),
    ("20240115123", None),                  # trailing characters (billing took the first eight)
    ("20240115XYZ", None),
    ("2024+1+5", None),                     # signs (retention's int() accepted them)
    ("2024 1 5", None),
    ("٢٠٢٤٠١١٥", None),                     # non-ASCII digits
    ("2024.1.15", None),
    ("", None),
    (None, None),
])
def test_parse_da_table(value, expected):
    assert parse_da(value) == expected


@pytest.mark.parametrize("value, iso, normal", [
    ("19970424", "1997-04-24", "19970424"),
    ("1997.04.24", "1997-04-24", "19970424"),
    ("19971324", None, None),   # the three old DA -> ISO copies printed "1997-13-24"
    ("abc", None, None),
    (None, None, None),
])
def test_da_to_iso_and_normalize_da(value, iso, normal):
    assert da_to_iso(value) == iso
    assert normalize_da(value) == normal


def test_format_da_round_trips_and_pads_small_years():
    assert format_da(date(2024, 3, 5)) == "20240305"
    assert format_da(date(987, 1, 2)) == "09870102"
    assert parse_da(format_da(date(2026, 12, 31))) == date(2026, 12, 31)


@pytest.mark.parametrize("value, upper, expected", [
    ("10", False, "100000.000000"),
    ("10", True, "105959.999999"),
    ("1015", False, "101500.000000"),
    ("101532.25", False, "101532.250000"),
    ("10:15:32", False, "101532.000000"),   # ACR-NEMA form
    ("101", False, None),                   # odd number of digits
    ("101532.1234567", False, None),        # more than six fraction digits
    ("١٠", False, None),                    # non-ASCII digits
    ("ab", False, None),
    (None, False, None),
])
def test_normalize_tm_table(value, upper, expected):
    assert normalize_tm(value, upper=upper) == expected


@pytest.mark.parametrize("value, expected", [
    ("DUPRÉ^JEAN-FRANÇOIS^^DR", "DUPRÉ Jean-François"),
    ("Durand^Marie", "DURAND Marie"),
    ("DURAND^MARIE^CLAIRE", "DURAND Marie Claire"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "YAMADA Tarou"),   # alphabetic group only
    ("MARTIN", "MARTIN"),
    ("", ""),
    (None, ""),
])
def test_person_name_table(value, expected):
    assert person_name(value) == expected


def test_person_name_as_stored_keeps_given_names_in_capitals():
    """Invoices and media print the given names as the archive holds them (no title case)."""
    assert person_name("dupré^JEAN-FRANÇOIS^^DR", as_stored=True) == "DUPRÉ JEAN-FRANÇOIS"
    assert person_name("Durand^Marie=デュラン", as_stored=True) == "DURAND Marie"


@pytest.mark.parametrize("instant, day", [
    (datetime(2026, 12, 31, 22, 59, tzinfo=timezone.utc), date(2026, 12, 31)),
    (datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc), date(2027, 1, 1)),     # winter: UTC+1
    (datetime(2026, 7, 14, 21, 59, tzinfo=timezone.utc), date(2026, 7, 14)),
    (datetime(2026, 7, 14, 22, 0, tzinfo=timezone.utc), date(2026, 7, 15)),     # summer: UTC+2
    (datetime(2026, 12, 31, 23, 30), date(2027, 1, 1)),                           # naive = stored UTC
])
def test_paris_day_is_the_calendar_day_in_paris(instant, day):
    assert paris_day(instant) == day


def test_paris_midnight_is_the_utc_instant_the_day_starts():
    assert paris_midnight(date(2026, 3, 29)) == datetime(2026, 3, 28, 23, tzinfo=timezone.utc)   # DST starts that day
    assert paris_midnight(date(2026, 7, 1)) == datetime(2026, 6, 30, 22, tzinfo=timezone.utc)
    assert paris_day(paris_midnight(date(2026, 10, 25))) == date(2026, 10, 25)


def test_as_utc_repairs_naive_values_only():
    naive = datetime(2026, 5, 1, 12, 0)
    assert as_utc(naive) == datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    other = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    assert as_utc(other) is other   # an aware value is never reinterpreted
    assert paris_time(naive).hour == 14


def test_utcnow_is_aware_utc():
    now = utcnow()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)


def test_advisory_lock_keys_are_distinct():
    """Two jobs sharing a key would wait on each other (a sweep blocking every payment)."""
    from archive_core import values

    keys = {name: getattr(values, name) for name in values.__all__ if name.startswith("LOCK_")}
    assert len(keys) >= 4 and len(set(keys.values())) == len(keys)
    assert all(isinstance(k, int) and 0 < k < 2**63 for k in keys.values())
