"""RabbitMQ plumbing for every process that talks to the broker (the consumers, the relay,
bin/demo): connection parameters, queue declarations, the events exchange and its queues, backoff,
what a broker failure looks like, and a publisher with pipelined confirms. What a database error means is app/sqlstates.py."""
from __future__ import annotations

import logging
import random
import time
from typing import Any, Iterable

import pika
import pika.exceptions

from app.settings import Settings

log = logging.getLogger("position_manager.broker")

# ws-gateway declares the position queue with exactly these arguments; a declaration
# with other arguments is refused by the broker (406 PRECONDITION_FAILED) and closes the channel.
POSITION_QUEUE_ARGUMENTS = {"x-message-ttl": 86400000, "x-max-length": 100000, "x-overflow": "drop-head"}

# The event types the relay publishes; each is the routing key on the events exchange.
EVENT_TYPES = ("position_updated", "portfolio_updated", "position_snapshot_created")


def connection_parameters(settings: Settings, name: str) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=settings.rabbitmq_host,
        port=settings.rabbitmq_port,
        virtual_host=settings.rabbitmq_vhost,
        credentials=pika.PlainCredentials(settings.rabbitmq_user, settings.rabbitmq_password),
        heartbeat=30,
        blocked_connection_timeout=60,
        connection_attempts=1,
        socket_timeout=5,
        client_properties={"connection_name": f"{settings.service_name}:{name}"},
    )


def connect(settings: Settings, name: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(connection_parameters(settings, name))


def event_queues(settings: Settings) -> dict[str, str]:
    """{event type: our queue bound to it on the events exchange}."""
    return dict(zip(EVENT_TYPES, (settings.position_updated_queue, settings.portfolio_updated_queue,
                                  settings.snapshot_created_queue)))


def bounded_queues(settings: Settings) -> set[str]:
    """The event queues that no service of the trading stack reads: declared with a bound."""
    return {settings.portfolio_updated_queue, settings.snapshot_created_queue}


def queue_arguments(settings: Settings, queue: str) -> dict[str, Any] | None:
    """Arguments we declare a queue with: the position queue as ws-gateway does; the event queues
    nobody in the trading stack reads with POSITION_MANAGER_EVENT_QUEUE_MAX_LENGTH / _TTL (the oldest
    messages dropped first); the rest (position_updated as model-service declares it, the order and
    dead-letter queues) none."""
    if queue == settings.position_queue:
        return dict(POSITION_QUEUE_ARGUMENTS)
    if queue in bounded_queues(settings):
        bound: dict[str, Any] = {}
        if settings.event_queue_max_length:
            bound["x-max-length"] = settings.event_queue_max_length
        if settings.event_queue_ttl:
            bound["x-message-ttl"] = settings.event_queue_ttl * 1000
        if bound:
            bound["x-overflow"] = "drop-head"
        return bound or None
    return None


def declare_queue(connection: pika.BlockingConnection, channel, settings: Settings, queue: str):
    """Declare a durable queue with our arguments. When the broker already has it with other
    arguments (406), warn and fall back to a passive declaration on a fresh channel instead of
    failing: the queue's owner decides its arguments. Returns the (possibly new) channel."""
    try:
        channel.queue_declare(queue=queue, durable=True, arguments=queue_arguments(settings, queue))
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        log.warning("queue exists with other arguments, using it as it is",
                    extra={"queue": queue, "broker_reply": exc.reply_text})
        channel = connection.channel()
        channel.queue_declare(queue=queue, passive=True)
        return channel


def declare_replacing_unread(connection: pika.BlockingConnection, channel, settings: Settings, queue: str):
    """Declare one of our bounded event queues. When it exists with other arguments (the earlier
    service declared it without any, or the bound was changed), the broker refuses the
    declaration (406), and AMQP cannot show its arguments; a passive declaration shows whether
    anyone reads it. Nobody: it is deleted (if-unused, so a consumer that attached meanwhile keeps
    it) and declared with the bound; the messages it held, which nobody was reading, go with it.
    Somebody: it is left as it is (its reader keeps it short) and a warning says so. Returns the
    channel to go on with."""
    arguments = queue_arguments(settings, queue)
    try:
        channel.queue_declare(queue=queue, durable=True, arguments=arguments)
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        refused = exc.reply_text
    channel = connection.channel()
    found = channel.queue_declare(queue=queue, passive=True).method
    if found.consumer_count:
        log.warning("event queue exists with other arguments and has consumers: left as it is, unbounded "
                    "unless its own arguments bound it", extra={
                        "queue": queue, "consumers": found.consumer_count, "messages": found.message_count,
                        "wanted_arguments": arguments, "broker_reply": refused})
        return channel
    try:
        deleted = channel.queue_delete(queue=queue, if_unused=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        log.warning("event queue gained a consumer while being replaced: left as it is", extra={"queue": queue})
        return connection.channel()
    channel.queue_declare(queue=queue, durable=True, arguments=arguments)
    log.warning("event queue without a reader replaced by a bounded one", extra={
        "queue": queue, "arguments": arguments, "messages_dropped": deleted, "broker_reply": refused})
    return channel


def declare_events(connection: pika.BlockingConnection, channel, settings: Settings):
    """The events topology: the durable topic exchange POSITION_MANAGER_EVENTS_EXCHANGE, and each
    of our event queues bound to it with its event type as routing key (position_updated declared
    as model-service declares it; the two nobody reads bounded). Any other service binds a queue
    of its own and gets every event. Returns the channel to go on with."""
    channel.exchange_declare(exchange=settings.events_exchange, exchange_type="topic", durable=True)
    for event_type, queue in event_queues(settings).items():
        if queue in bounded_queues(settings):
            channel = declare_replacing_unread(connection, channel, settings, queue)
        else:
            channel = declare_queue(connection, channel, settings, queue)
        channel.queue_bind(queue=queue, exchange=settings.events_exchange, routing_key=event_type)
    return channel


class Backoff:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... capped; reset after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempt = 0


class PublishError(RuntimeError):
    """The broker nacked, returned (unroutable) or did not confirm a message in time."""


# What a lost or misbehaving broker looks like (connection or channel gone, socket errors, a
# publish not confirmed): the caller drops the connection and reconnects with backoff.
BROKER_ERRORS = (pika.exceptions.AMQPError, OSError, PublishError)


class ConfirmingPublisher:
    """Publishes a batch of messages and waits until the broker confirmed all of them.

    pika's BlockingChannel in confirm mode waits for the broker's ack after every single
    basic_publish: one round trip per message (measured here: ~1,700 persistent messages/s).
    Publishing the whole batch first and then waiting once for the acks (delivery tags, possibly
    `multiple`) gives ~9,000/s on the same broker. BlockingChannel has no public API for that,
    so confirm mode is enabled on its underlying asynchronous channel (`_impl`, stable since
    pika 0.10) with our own ack/nack/return callbacks; publishing itself stays on the public
    BlockingChannel.basic_publish, which does not wait when the blocking wrapper is not in
    confirm mode.
    """

    def __init__(self, connection: pika.BlockingConnection, channel, confirm_timeout: float = 30.0) -> None:
        self.connection, self.channel, self.confirm_timeout = connection, channel, confirm_timeout
        self._published = 0          # delivery tag of the last message published on this channel
        self._confirmed = 0          # every tag <= this one is acked
        self._acked: set[int] = set()
        self._failed: list[str] = []
        ready: list[bool] = []
        impl = channel._impl  # noqa: SLF001 (see the class docstring)
        impl.add_on_return_callback(self._on_return)
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True))
        deadline = time.monotonic() + confirm_timeout
        while not ready:
            if time.monotonic() > deadline:
                raise PublishError("the broker did not enable confirm mode")
            connection.process_data_events(time_limit=0.01)

    def _on_confirm(self, frame) -> None:
        method = frame.method
        tags = range(self._confirmed + 1, method.delivery_tag + 1) if method.multiple else [method.delivery_tag]
        if isinstance(method, pika.spec.Basic.Nack):
            self._failed.append(f"broker nacked delivery tag(s) up to {method.delivery_tag}")
        self._acked.update(tags)
        while self._confirmed + 1 in self._acked:
            self._confirmed += 1
            self._acked.discard(self._confirmed)

    def _on_return(self, _channel, method, properties, _body) -> None:
        self._failed.append(f"unroutable: {method.reply_code} {method.reply_text} "
                            f"(routing key {method.routing_key}, message_id {properties.message_id})")

    def publish_all(self, messages: Iterable[tuple[str, bytes, pika.BasicProperties]], exchange: str = "") -> int:
        """Publish (routing key, body, properties) on `exchange` (the default exchange: routing key =
        queue), mandatory, and return once the broker confirmed every one; raise PublishError
        otherwise (nothing is known then: the caller must treat every message of the batch as not
        published)."""
        self._failed.clear()
        count = 0
        for routing_key, body, properties in messages:
            self.channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body,
                                       properties=properties, mandatory=True)
            self._published += 1
            count += 1
        deadline = time.monotonic() + self.confirm_timeout
        while self._confirmed < self._published and not self._failed:
            if time.monotonic() > deadline:
                raise PublishError(f"no confirm within {self.confirm_timeout}s "
                                   f"({self._published - self._confirmed} outstanding)")
            # short polls: confirms do not count as "events" that end a longer wait early
            self.connection.process_data_events(time_limit=0.002)
        if self._failed:
            raise PublishError("; ".join(self._failed))
        return count
