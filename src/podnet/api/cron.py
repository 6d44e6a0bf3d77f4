"""Cron schedules as a CronJob reads them: the standard five fields (or a `@hourly`-style
macro) in a time zone.

What belongs here: `schedule_errors` (why a schedule cannot be used; validation's half) and
`times_between` / `next_time` (when it fires; the CronJob controller's half), so the API and
the controller agree on what a schedule means. The arithmetic is croniter's (a maintained
library: releases through 2026); this module pins it to upstream's dialect (robfig/cron
`ParseStandard`): exactly five fields — minute, hour, day of month, month, day of week — or
one of `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`.
Seconds and year fields, which croniter would accept, are refused.

Times are computed in the schedule's zone (an IANA name; UTC when none is given — podnet's
controller manager has no "local" zone of its own) and returned in UTC, so daylight-saving
transitions behave as the wall clock of that zone says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _expression(schedule: str) -> str:
    return MACROS.get(schedule.strip(), schedule.strip())


def schedule_errors(schedule: str) -> list[str]:
    """Why `schedule` is not a standard cron schedule (empty: it is one)."""
    expression = _expression(schedule)
    if expression.startswith("@"):
        return [f"unrecognized descriptor: {schedule}"]
    fields = expression.split()
    if len(fields) != 5:
        return [f"expected exactly 5 fields, found {len(fields)}: {schedule}"]
    try:
        croniter(expression)
    except (CroniterError, ValueError) as exc:
        return [f"unparseable schedule: {exc}"]
    return []


def zone(name: str | None) -> ZoneInfo:
    """The schedule's zone; raises ValueError naming an unknown zone."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name}") from None


def next_time(schedule: str, zone_name: str | None, after: datetime) -> datetime:
    """The first time strictly after `after` that the schedule fires (UTC)."""
    it = croniter(_expression(schedule), after.astimezone(zone(zone_name)))
    result: datetime = it.get_next(datetime)
    return result.astimezone(UTC)


def times_between(
    schedule: str, zone_name: str | None, start: datetime, end: datetime, limit: int
) -> list[datetime]:
    """The firing times in (start, end], oldest first, at most `limit + 1` of them (the
    caller only needs to know that there were more than `limit`)."""
    out: list[datetime] = []
    it = croniter(_expression(schedule), start.astimezone(zone(zone_name)))
    while len(out) <= limit:
        when: datetime = it.get_next(datetime)
        if when.astimezone(UTC) > end:
            break
        out.append(when.astimezone(UTC))
    return out
