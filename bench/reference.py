"""The reference fold: the fill accounting of docs/contract.md ("Applying one execution") written
again in Python, independently of the SQL, in Decimal, with averages and realized PnL rounded to
8 decimals like the shared tables' DECIMAL(20,8) (half away from zero, like round(numeric, 8)).

It is the oracle of the SQL-core tests, the pipeline tests, the soak and the end-to-end benchmark:
each adapts its own records to `Fill` and compares the stored position with `ref_fold`. Pure: no
database, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)   # minute 0 of a Fill
EIGHT = Decimal("0.00000001")


def at_naive(minutes: float) -> datetime:
    """T0 + `minutes`, as the naive UTC timestamp the shared tables store."""
    return (T0 + timedelta(minutes=minutes)).replace(tzinfo=None)


def r8(x: Decimal) -> Decimal:
    """Round half away from zero to 8 decimals, like PostgreSQL's round(numeric, 8)."""
    return x.quantize(EIGHT, rounding=ROUND_HALF_UP)


def sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


@dataclass
class Fill:
    side: str          # Buy | Sell
    qty: Decimal
    price: Decimal
    fee: Decimal
    minute: float      # execution time, minutes after T0: the fold's order
    leg: int = 0       # 0 one-way, 1 hedge long, 2 hedge short
    funding: bool = False   # Bybit execType Funding: realized PnL only


@dataclass
class RefState:
    size: Decimal = Decimal(0)
    avg: Decimal | None = None
    long_size: Decimal = Decimal(0)
    long_avg: Decimal | None = None
    short_size: Decimal = Decimal(0)
    short_avg: Decimal | None = None
    realized: Decimal = Decimal(0)
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    history: list = field(default_factory=list)

    def flat(self) -> bool:
        return self.size == 0 and self.long_size == 0 and self.short_size == 0


def ref_apply(st: RefState, f: Fill) -> RefState:
    """One fill, exactly as the contract states it."""
    when = at_naive(f.minute)
    was_flat = st.flat()
    if f.funding:
        st.realized = r8(st.realized - f.fee)
        return st
    if f.leg == 0:
        d = f.qty if f.side == "Buy" else -f.qty
        if st.size == 0 or sign(st.size) == sign(d):
            st.avg = r8((abs(st.size) * (st.avg or 0) + f.qty * f.price) / (abs(st.size) + f.qty))
            st.size += d
        else:
            c = min(abs(st.size), f.qty)
            st.realized += c * (f.price - st.avg) * sign(st.size)
            new = st.size + d
            if new == 0:
                st.avg = None
            elif sign(new) != sign(st.size):
                st.avg = f.price
                st.opened_at, st.closed_at = when, None
            st.size = new
    elif f.leg == 1:
        if f.side == "Buy":
            st.long_avg = r8((st.long_size * (st.long_avg or 0) + f.qty * f.price) / (st.long_size + f.qty))
            st.long_size += f.qty
        else:
            assert f.qty <= st.long_size, "reference: long leg reduced below zero"
            st.realized += f.qty * (f.price - st.long_avg)
            st.long_size -= f.qty
            st.long_avg = None if st.long_size == 0 else st.long_avg
        st.size = st.long_size - st.short_size
    else:
        if f.side == "Sell":
            st.short_avg = r8((st.short_size * (st.short_avg or 0) + f.qty * f.price) / (st.short_size + f.qty))
            st.short_size += f.qty
        else:
            assert f.qty <= st.short_size, "reference: short leg reduced below zero"
            st.realized += f.qty * (st.short_avg - f.price)
            st.short_size -= f.qty
            st.short_avg = None if st.short_size == 0 else st.short_avg
        st.size = st.long_size - st.short_size
    st.realized = r8(st.realized - f.fee)
    if was_flat and not st.flat():
        st.opened_at, st.closed_at = when, None
    elif not was_flat and st.flat():
        st.closed_at = when
    return st


def ref_fold(fills: list[Fill]) -> RefState:
    """The reference position after `fills`, applied in time order (ties keep list order)."""
    st = RefState()
    for f in sorted(fills, key=lambda x: x.minute):
        ref_apply(st, f)
    return st


def fold_fills(fills: Iterable[tuple]) -> tuple[Decimal, Decimal | None, Decimal]:
    """(size, average, realized) of a one-way position after fills given as (side, qty, price, fee),
    in execution-time order; the inputs are rounded to 8 decimals first, as the tables hold them."""
    st = ref_fold([Fill(side=side, qty=r8(Decimal(qty)), price=r8(Decimal(price)), fee=r8(Decimal(fee)), minute=i)
                   for i, (side, qty, price, fee) in enumerate(fills)])
    return st.size, st.avg, st.realized
