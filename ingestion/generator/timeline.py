"""The run's time grid: history (as_of - 730 days .. as_of), a 90-day future, monthly steps.

Times are int64 microseconds since the Unix epoch, UTC, everywhere in the generator.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

US_PER_SECOND = 1_000_000
US_PER_MINUTE = 60 * US_PER_SECOND
US_PER_HOUR = 60 * US_PER_MINUTE
US_PER_DAY = 24 * US_PER_HOUR
HISTORY_DAYS = 730
FUTURE_DAYS = 90


def to_us(day: dt.date) -> int:
    """Midnight UTC of a date, in microseconds."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * US_PER_SECOND


@dataclass(frozen=True)
class Month:
    label: str  # YYYY-MM, names the monthly files
    start_us: int  # this step covers [start_us, end_us)
    end_us: int

    def day_us(self, day: int) -> int:
        """Midnight UTC of the given day (1-based) of this calendar month."""
        year, month = map(int, self.label.split("-"))
        return to_us(dt.date(year, month, day))

    @property
    def days(self) -> float:
        return (self.end_us - self.start_us) / US_PER_DAY


@dataclass(frozen=True)
class Timeline:
    as_of: dt.date
    start_us: int  # as_of - 730 days, 00:00
    cutoff_us: int  # end of the as_of day: landing files hold only times before this
    future_end_us: int  # cutoff + 90 days: the future ground-truth window ends here
    months: tuple[Month, ...]  # calendar months from start to future_end, clipped

    @classmethod
    def for_as_of(cls, as_of: dt.date) -> "Timeline":
        start = as_of - dt.timedelta(days=HISTORY_DAYS)
        cutoff = as_of + dt.timedelta(days=1)
        future_end = cutoff + dt.timedelta(days=FUTURE_DAYS)
        months = []
        first = dt.date(start.year, start.month, 1)
        while first < future_end:
            nxt = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
            months.append(Month(f"{first:%Y-%m}", to_us(max(first, start)), to_us(min(nxt, future_end))))
            first = nxt
        return cls(as_of, to_us(start), to_us(cutoff), to_us(future_end), tuple(months))

    @property
    def history_months(self) -> list[Month]:
        """Months with at least some time before the cutoff (these get landing files)."""
        return [m for m in self.months if m.start_us < self.cutoff_us]
