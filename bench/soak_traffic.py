"""The soak's traffic: message bodies as the real producers send them, and the record of what
they mean, so that the end state can be checked against a fold computed here.

Order/fill messages come in all three order shapes (A per-execution, B order-manager's
cumulative order events, C Bybit execution records incl. Funding), over 50 assets. Every
execution gets a unique execution time (milliseconds, strictly increasing in generation order),
so the ledger order (time, seq, key) is the generation order and the expected fold is exact.
Position events use the three position shapes. Poison messages are every kind of bad input.

Pure: nothing here talks to a server. `fold()` / `fold_hedge()` apply the reference fold
(bench/reference.py: Decimal, rounded to the 8 decimals of the shared tables, Funding realized only)
in ledger order.
"""
from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from bench.reference import Fill, ref_fold

Q8 = Decimal("0.00000001")
ORDER_QUEUE, POSITION_QUEUE = "order", "position"   # roles; the real names come from the settings
POISON_HEDGE_ASSET = "SOAKHEDGEUSDT"                # only ever reduced in hedge mode: always invalid


def q8(x: Decimal) -> Decimal:
    return x.quantize(Q8, rounding=ROUND_HALF_UP)


def plain(x: Decimal) -> str:
    """A decimal as PostgreSQL's trim_scale(x)::text prints it (no exponent, no trailing zeros)."""
    text = format(x, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Execution:
    """One ledger row we expect: key as the SQL core builds it (execution_id, execId,
    order:<id>:<cumulative qty>)."""
    key: str
    asset: str
    kind: str            # trade | funding
    side: str | None
    qty: Decimal | None
    price: Decimal | None
    fee: Decimal
    time_ms: int
    seq: int = -1
    leg: int = 0         # 0 one-way, 1 hedge long leg, 2 hedge short leg


@dataclass
class Message:
    role: str                    # ORDER_QUEUE | POSITION_QUEUE
    body: bytes
    message_id: str
    kind: str                    # order_A|order_B|order_C|position_A|position_B|position_C|poison:<what>
    executions: tuple[Execution, ...] = ()
    duplicate_of: str | None = None
    mark: tuple[str, int, int, Decimal] | None = None   # position events: (asset, updatedTime ms, seq, markPrice)


@dataclass
class Unit:
    """Messages published together, in this order (one order's cumulative events stay in order).
    A hedge unit is never held back: a reduce delivered before the fill that opened its leg is
    invalid input, so hedge legs depend on delivery order, unlike one-way positions."""
    messages: list[Message] = field(default_factory=list)
    reorderable: bool = True


def _reference(executions):
    """The reference state (bench/reference.py) after `executions` in ledger
    order (time, seq, key)."""
    ordered = sorted(executions, key=lambda e: (e.time_ms, e.seq, e.key))
    return ref_fold([Fill(side=e.side, qty=e.qty, price=e.price, fee=e.fee, minute=i, leg=e.leg,
                          funding=e.kind == "funding") for i, e in enumerate(ordered)])


def fold(executions) -> tuple[Decimal, Decimal | None, Decimal]:
    """(size, average entry price, realized) of a one-way position after `executions`."""
    st = _reference(executions)
    return st.size, st.avg, st.realized


def fold_hedge(executions) -> tuple:
    """(size, long size, long average, short size, short average, realized) of a hedge position."""
    st = _reference(executions)
    return st.size, st.long_size, st.long_avg, st.short_size, st.short_avg, st.realized


class Traffic:
    """Generates units of order messages, position events and poison messages."""

    def __init__(self, seed: int = 1, assets: int = 50, run_tag: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.assets = [f"SK{i:02d}USDT" for i in range(assets)]
        self.tag = run_tag or uuid.uuid4().hex[:8]
        # prices from ~0.1 to ~60,000 USDT, log-uniform; quantities worth ~20..2,000 USDT
        self.price = {a: Decimal(str(round(10 ** self.rng.uniform(-1, 4.8), 4))) for a in self.assets}
        self.size = {a: Decimal(0) for a in self.assets}      # generation-order size, to keep sizes bounded
        self.last_ms = 0
        self.counter = 0
        self.position_seq = {a: 0 for a in self.assets}
        self.exec_seq = self.rng.randint(10**9, 10**10)       # Bybit's cross sequence: < 10^12
        self.hedge_assets = [f"SKH{i}USDT" for i in range(2)]   # traded in hedge mode (position_idx 1/2)
        self.legs = {(a, leg): Decimal(0) for a in self.hedge_assets for leg in (1, 2)}

    # ---- helpers -----------------------------------------------------------------------------

    def _next_ms(self) -> int:
        """A unique, strictly increasing execution time near now (ms)."""
        self.last_ms = max(self.last_ms + 1, int(time.time() * 1000))
        return self.last_ms

    def _next_seq(self) -> int:
        self.exec_seq += 1
        return self.exec_seq

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.tag}-{self.counter}"

    def _move_price(self, asset: str) -> Decimal:
        p = self.price[asset] * Decimal(str(1 + self.rng.uniform(-0.002, 0.002)))
        self.price[asset] = max(Decimal("0.0001"), p.quantize(Decimal("0.0001")))
        return self.price[asset]

    def _fill(self, asset: str) -> tuple[str, Decimal, Decimal]:
        price = self._move_price(asset)
        qty = max(Decimal("0.001"), (Decimal(str(self.rng.uniform(20, 2000))) / price).quantize(Decimal("0.001")))
        cap = (Decimal(20000) / price).quantize(Decimal("0.001"))   # keep holdings below ~20k USDT
        if abs(self.size[asset]) > cap:
            side = "Sell" if self.size[asset] > 0 else "Buy"
        else:
            side = self.rng.choice(("Buy", "Sell"))
        self.size[asset] += qty if side == "Buy" else -qty
        return side, qty, price

    def _fee(self, qty: Decimal, price: Decimal) -> Decimal:
        rate = Decimal("-0.0001") if self.rng.random() < 0.2 else Decimal("0.00055")   # maker rebate sometimes
        return q8(qty * price * rate)

    # ---- order messages (shapes A, B, C) --------------------------------------------------------

    def order_unit(self) -> Unit:
        r = self.rng.random()
        if r < 0.05:
            return Unit([self._hedge(self.rng.choice(self.hedge_assets))], reorderable=False)
        asset = self.rng.choice(self.assets)
        if r < 0.4:
            return Unit([self._shape_a(asset)])
        if r < 0.7:
            return Unit(self._shape_b(asset))
        return Unit([self._shape_c(asset)])

    def _shape_a(self, asset: str) -> Message:
        side, qty, price = self._fill(asset)
        fee, ms = self._fee(qty, price), self._next_ms()
        exec_id, event_id = self._id("a"), str(uuid.uuid4())
        body = {"event_id": event_id, "event_type": "order_executed", "execution_id": exec_id,
                "order_id": self._id("o"), "asset": asset, "side": side, "execution_quantity": str(qty),
                "execution_price": str(price), "execution_fees": str(fee), "executed_at": iso_ms(ms),
                "mode": "one-way", "trace_id": self._id("trace")}
        return Message(ORDER_QUEUE, json.dumps(body).encode(), event_id, "order_A",
                       (Execution(exec_id, asset, "trade", side, qty, price, fee, ms),))

    def _hedge(self, asset: str) -> Message:
        """One hedge-mode execution (shape A or C): adds to a leg, or reduces it by at most its size."""
        leg = self.rng.choice((1, 2))
        held = self.legs[(asset, leg)]
        price = self._move_price_hedge(asset)
        qty = max(Decimal("0.001"), (Decimal(str(self.rng.uniform(20, 2000))) / price).quantize(Decimal("0.001")))
        reduce = held > 0 and self.rng.random() < 0.45
        if reduce:
            qty = min(qty, held)
        side = ("Sell" if leg == 1 else "Buy") if reduce else ("Buy" if leg == 1 else "Sell")
        self.legs[(asset, leg)] = held - qty if reduce else held + qty
        fee, ms = self._fee(qty, price), self._next_ms()
        if self.rng.random() < 0.5:
            exec_id, event_id = self._id("ha"), str(uuid.uuid4())
            body: dict = {"event_id": event_id, "event_type": "order_executed", "execution_id": exec_id,
                          "order_id": self._id("o"), "asset": asset, "side": side, "execution_quantity": str(qty),
                          "execution_price": str(price), "execution_fees": str(fee), "executed_at": iso_ms(ms),
                          "mode": "hedge", "position_idx": leg, "trace_id": self._id("trace")}
            return Message(ORDER_QUEUE, json.dumps(body).encode(), event_id, "order_A_hedge",
                           (Execution(exec_id, asset, "trade", side, qty, price, fee, ms, -1, leg),))
        exec_id, seq = self._id("hc"), self._next_seq()
        body = {"category": "linear", "symbol": asset, "execId": exec_id, "orderId": str(uuid.uuid4()), "side": side,
                "execQty": str(qty), "execPrice": str(price), "execFee": str(fee), "execTime": str(ms),
                "execType": "Trade", "seq": seq, "isMaker": False, "orderType": "Market", "positionIdx": leg}
        return Message(ORDER_QUEUE, json.dumps(body).encode(), str(uuid.uuid4()), "order_C_hedge",
                       (Execution(exec_id, asset, "trade", side, qty, price, fee, ms, seq, leg),))

    def _move_price_hedge(self, asset: str) -> Decimal:
        if asset not in self.price:
            self.price[asset] = Decimal(str(round(10 ** self.rng.uniform(0, 4), 4)))
        return self._move_price(asset)

    def _shape_b(self, asset: str) -> list[Message]:
        """One order filled in 1..3 partial fills at one price (so each derived execution's price is
        exact), as cumulative events; sometimes followed by a non-fill event (normal traffic)."""
        side, qty, price = self._fill(asset)
        parts = self.rng.choice((1, 1, 2, 3))
        cuts = sorted({Decimal(self.rng.randint(1, 999)) / 1000 for _ in range(parts - 1)})
        cum_list = [max(Decimal("0.001"), (qty * c).quantize(Decimal("0.001"))) for c in cuts] + [qty]
        cum_list = sorted(set(cum_list))
        order_id = self._id("ord")
        total_fee = self._fee(qty, price)
        out, prev_q, prev_fee = [], Decimal(0), Decimal(0)
        for i, cum_q in enumerate(cum_list):
            last = i == len(cum_list) - 1
            cum_fee = total_fee if last else q8(total_fee * cum_q / qty)
            ms = self._next_ms()
            event_type = "filled" if last else "partially_filled"
            body = self._order_event(order_id, asset, side, qty, cum_q, price, cum_fee, event_type, ms)
            key = f"order:{order_id}:{plain(cum_q)}"
            ex = Execution(key, asset, "trade", side, cum_q - prev_q, price, cum_fee - prev_fee, ms)
            out.append(Message(ORDER_QUEUE, json.dumps(body).encode(), body["event_id"], "order_B", (ex,)))
            prev_q, prev_fee = cum_q, cum_fee
        if self.rng.random() < 0.15:   # a cancel / dry run: acknowledged, no effect
            other = self._id("ord")
            kind = self.rng.choice(("cancelled", "dry_run"))
            body = self._order_event(other, asset, side, qty, Decimal(0) if kind == "cancelled" else qty,
                                     None if kind == "cancelled" else price, Decimal(0),
                                     "cancelled" if kind == "cancelled" else "filled", self._next_ms(),
                                     is_dry_run=kind == "dry_run")
            out.append(Message(ORDER_QUEUE, json.dumps(body).encode(), body["event_id"], "order_B"))
        return out

    def _order_event(self, order_id, asset, side, qty, filled, avg, fees, event_type, ms, is_dry_run=False) -> dict:
        return {"event_id": str(uuid.uuid4()), "event_type": event_type, "timestamp": iso_ms(ms),
                "trace_id": self._id("trace"), "source": "order-manager",
                "order": {"id": str(uuid.uuid4()), "order_id": order_id, "signal_id": str(uuid.uuid4()),
                          "asset": asset, "side": side, "order_type": "Market", "quantity": str(qty), "price": None,
                          "status": event_type, "filled_quantity": str(filled),
                          "average_price": None if avg is None else str(avg), "fees": str(fees),
                          "created_at": iso_ms(ms - 5), "updated_at": iso_ms(ms), "executed_at": iso_ms(ms),
                          "trace_id": None, "is_dry_run": is_dry_run}}

    def _shape_c(self, asset: str) -> Message:
        """A raw Bybit execution message (1..3 records; ~10% Funding) or one bare record."""
        records, executions = [], []
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            ms, seq = self._next_ms(), self._next_seq()
            exec_id = self._id("c")
            if self.rng.random() < 0.1:
                fee = q8(Decimal(str(self.rng.uniform(-2, 2))))
                records.append({"category": "linear", "symbol": asset, "execId": exec_id, "orderId": "",
                                "side": "Buy", "execQty": "0", "execPrice": str(self.price[asset]),
                                "execFee": str(fee), "execTime": str(ms), "execType": "Funding", "seq": seq,
                                "positionIdx": 0})
                executions.append(Execution(exec_id, asset, "funding", None, None, None, fee, ms, seq))
                continue
            side, qty, price = self._fill(asset)
            fee = self._fee(qty, price)
            records.append({"category": "linear", "symbol": asset, "execId": exec_id, "orderId": str(uuid.uuid4()),
                            "side": side, "execQty": str(qty), "execPrice": str(price), "execFee": str(fee),
                            "execTime": str(ms), "execType": "Trade", "seq": seq, "isMaker": False,
                            "orderType": "Market", "positionIdx": 0})
            executions.append(Execution(exec_id, asset, "trade", side, qty, price, fee, ms, seq))
        if len(records) == 1 and self.rng.random() < 0.3:
            body: dict = records[0]
        else:
            body = {"id": self._id("bybit"), "topic": "execution", "creationTime": int(time.time() * 1000),
                    "data": records}
        return Message(ORDER_QUEUE, json.dumps(body).encode(), str(uuid.uuid4()), "order_C", tuple(executions))

    # ---- position events (shapes A, B, C) ------------------------------------------------------

    def position_event(self) -> Message:
        asset = self.rng.choice(self.assets)
        mark = self._move_price(asset)
        size = self.size[asset]
        side = "Buy" if size > 0 else "Sell" if size < 0 else ""
        self.position_seq[asset] += 1
        seq, ms = self.position_seq[asset], int(time.time() * 1000)
        upnl = q8(size * (mark - self.price[asset]))
        raw = {"positionIdx": 0, "symbol": asset, "side": side, "size": plain(abs(size)),
               "entryPrice": str(mark), "markPrice": str(mark), "unrealisedPnl": str(upnl),
               "cumRealisedPnl": "0", "updatedTime": str(ms), "seq": seq, "positionStatus": "Normal",
               "leverage": "10"}
        event_id = str(uuid.uuid4())
        r = self.rng.random()
        if r < 0.6:
            body: dict = {"event_id": event_id, "event_type": "position", "topic": "position",
                          "timestamp": iso_ms(ms), "received_at": iso_ms(ms + 3), "trace_id": self._id("trace"),
                          "payload": {"symbol": asset, "size": plain(abs(size)), "side": side, "avg_price": None,
                                      "unrealised_pnl": str(upnl), "realised_pnl": "0", "mode": 0,
                                      "timestamp": iso_ms(ms), "raw": raw}}
            kind = "position_A"
        elif r < 0.8:
            body = {"event_id": event_id, "event_type": "position",
                    "payload": {"symbol": asset, "mode": "one-way", "size": plain(size), "avgPrice": str(mark),
                                "markPrice": str(mark), "unrealisedPnl": str(upnl), "realisedPnl": "0",
                                "timestamp": iso_ms(ms), "seq": seq}}
            kind = "position_B"
        else:
            body = {"id": event_id, "topic": "position", "creationTime": ms, "data": [raw]}
            kind = "position_C"
        return Message(POSITION_QUEUE, json.dumps(body).encode(), event_id, kind, mark=(asset, ms, seq, mark))

    # ---- poison: every kind of bad input --------------------------------------------------------

    POISON_KINDS = ("invalid_json", "missing_field", "zero_quantity", "negative_price", "nan",
                    "bad_symbol", "hedge_below_zero", "position_invalid_json", "position_bad_side")

    def poison(self) -> Message:
        what = self.rng.choice(self.POISON_KINDS)
        mid = self._id("poison")
        ms = self._next_ms()
        base = {"event_id": mid, "event_type": "order_executed", "execution_id": self._id("bad"),
                "order_id": self._id("o"), "asset": self.rng.choice(self.assets), "side": "Buy",
                "execution_quantity": "1", "execution_price": "100", "execution_fees": "0.01",
                "executed_at": iso_ms(ms)}
        role = ORDER_QUEUE
        if what == "invalid_json":
            body = b'{"event_id": "' + mid.encode() + b'", "execution_id": '
        elif what == "missing_field":
            del base["execution_price"]
            body = json.dumps(base).encode()
        elif what == "zero_quantity":
            base["execution_quantity"] = "0"
            body = json.dumps(base).encode()
        elif what == "negative_price":
            base["execution_price"] = "-5"
            body = json.dumps(base).encode()
        elif what == "nan":
            base["execution_price"] = "NaN"
            body = json.dumps(base).encode()
        elif what == "bad_symbol":
            base["asset"] = "not a symbol!"
            body = json.dumps(base).encode()
        elif what == "hedge_below_zero":
            base.update(asset=POISON_HEDGE_ASSET, side="Sell", mode="hedge", position_idx=1)
            body = json.dumps(base).encode()
        elif what == "position_invalid_json":
            role, body = POSITION_QUEUE, b'{"topic": "position", "data": [NaN'
        else:
            role = POSITION_QUEUE
            body = json.dumps({"event_id": mid, "event_type": "position",
                               "payload": {"symbol": base["asset"], "size": "1", "side": "Sideways",
                                           "markPrice": "100", "timestamp": iso_ms(ms)}}).encode()
        return Message(role, body, mid, f"poison:{what}")

    # ---- a warm-up unit: one execution per asset, so that every position exists before the
    # exchange's position events arrive (an event for an unknown position would create it from
    # the exchange's size, which is not a fill and would not be in the fold)

    def warmup(self) -> list[Message]:
        return [self._shape_a(a) for a in self.assets]
