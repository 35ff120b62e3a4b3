"""``**Estimated Time:**`` values: ``120-180 minutes``, ``2h``, ``45 min``, ``1-2 hours`` -> minutes.

The accepted forms (case-insensitive; documented in ``docs/backlog-format.md``):

- an amount: a number and a unit — ``45 min``, ``90m``, ``2h``, ``1.5 h``, ``2 hours``, ``1 day``;
  several parts add up: ``1h 30m``, ``1 h 30 min``;
- a range: two amounts joined by ``-``, ``–``, ``—`` or ``to`` — ``120-180 minutes``, ``1-2 hours``,
  ``30m-2h``, ``2 to 3 days``; an amount without a unit takes the other end's unit;
- optionally ``~``, ``≈``, ``about`` or ``approx.`` before it and a parenthesised note after it
  (``2h (with review)``), both ignored.

Units: ``m``/``min``/``mins``/``minute(s)``; ``h``/``hr``/``hrs``/``hour(s)``; ``d``/``day(s)``/
``working day(s)``. A day is :data:`MINUTES_PER_DAY` (8 working hours), the original's planning day,
not 24 hours: a story estimated at two days is two days of work.
"""

from __future__ import annotations

import re

__all__ = ["ACCEPTED_FORMS", "MINUTES_PER_DAY", "NO_ESTIMATE", "parse_duration_range"]

#: One working day, in minutes (8 h).
MINUTES_PER_DAY = 8 * 60
#: Values that mean "no estimate given" (then the complexity decides).
NO_ESTIMATE = frozenset({"", "none", "-", "--", "—", "–", "n/a", "na", "tbd", "tba", "unknown", "?"})
#: The forms quoted in error messages.
ACCEPTED_FORMS = "`120-180 minutes`, `45 min`, `90m`, `2h`, `1.5 h`, `1h 30m`, `1-2 hours`, `2-3 days` (a day is 8 hours)"

_UNITS: dict[str, float] = {}
for _names, _minutes in (
    (("m", "min", "mins", "minute", "minutes"), 1.0),
    (("h", "hr", "hrs", "hour", "hours"), 60.0),
    (("d", "day", "days", "working day", "working days"), float(MINUTES_PER_DAY)),
):
    for _name in _names:
        _UNITS[_name] = _minutes

_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_UNIT = r"(?:working\s+days?|[a-z]+)"
_PART = re.compile(rf"\s*(?P<number>{_NUMBER})\s*(?P<unit>{_UNIT})?", re.I)
_SEPARATOR = re.compile(r"\s*(?:-|–|—|\bto\b)\s*", re.I)
_PREFIX = re.compile(r"^(?:~|≈|about\b|approx\.?|approximately\b|ca\.)\s*", re.I)
_NOTE = re.compile(r"\s*\([^()]*\)\s*$")


def _amount(text: str) -> tuple[float, float | None]:
    """``(number, unit minutes or None)`` of one end of a range; compound parts are summed.

    Raises :class:`ValueError` when ``text`` is not numbers with units.
    """
    pos, parts = 0, []
    text = text.strip()
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {text[pos:].strip()!r}")
        unit = m.group("unit")
        factor = None
        if unit is not None:
            factor = _UNITS.get(re.sub(r"\s+", " ", unit.lower()))
            if factor is None:
                raise ValueError(f"unknown unit {unit!r}")
        parts.append((float(m.group("number")), factor))
        pos = m.end()
    if not parts:
        raise ValueError("no number")
    if len(parts) == 1:
        return parts[0]
    if any(factor is None for _, factor in parts):
        raise ValueError("every part of a compound amount needs a unit (`1h 30m`)")
    return sum(n * f for n, f in parts if f is not None), 1.0


def parse_duration_range(text: str) -> tuple[float, float] | None:
    """``(low, high)`` minutes of an ``**Estimated Time:**`` value; ``None`` for "no estimate".

    A single amount gives ``low == high``. Raises :class:`ValueError` with a short reason when the
    text is not one of the forms in the module docstring, an end is zero, or the low end is above
    the high end (the caller adds where and :data:`ACCEPTED_FORMS`).
    """
    value = text.strip()
    if value.lower() in NO_ESTIMATE:
        return None
    value = _NOTE.sub("", _PREFIX.sub("", value)).strip()
    ends = _SEPARATOR.split(value)
    if len(ends) > 2:
        raise ValueError("a range has two ends (`120-180 minutes`)")
    amounts = [_amount(end) for end in ends]
    units = [factor for _, factor in amounts if factor is not None]
    if not units:
        raise ValueError("no unit; say minutes, hours or days")
    # `1-2 hours`: an end without its own unit takes the other end's
    minutes = [number * (factor if factor is not None else units[-1]) for number, factor in amounts]
    low, high = minutes[0], minutes[-1]
    if low <= 0 or high <= 0:
        raise ValueError("an estimate must be more than zero")
    if low > high:
        raise ValueError(f"the low end ({low:g} min) is above the high end ({high:g} min)")
    return low, high
