"""The publisher's connection to the broker: one robust connection, one confirming channel,
the declared exchange; connected lazily, closed without waiting on a dead peer."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    ExchangeType,
)
from aio_pika.connection import make_url

from sutazai_agent.config import redact_url
from sutazai_agent.core.secrets import Scrubber

log = structlog.get_logger("sutazai_agent.events.publisher")
CLOSE_TIMEOUT_S = 5.0


class BrokerUnavailableError(Exception):
    """The connection to the broker is down; the robust connection is reconnecting."""


class BrokerConnection:
    """Holds the connection; ``exchange()`` connects when needed. ``reconnected`` is set each
    time the robust connection comes back; nothing is logged once ``closing`` is set."""

    def __init__(
        self,
        url: str,
        exchange: str,
        name: str,
        *,
        connect_timeout_s: float,
        reconnect_interval_s: float,
        scrubber: Scrubber,
        closing: asyncio.Event,
        reconnected: asyncio.Event,
    ) -> None:
        self._url = url
        self._exchange_name = exchange
        self._name = name
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_interval_s = reconnect_interval_s
        self._scrubber = scrubber
        self._closing = closing
        self._reconnected = reconnected
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def connected(self) -> bool:
        connection, channel = self._connection, self._channel
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    async def exchange(self) -> AbstractExchange:
        """The exchange on a live channel, connecting first if there is no connection."""
        if self._connection is not None and self._connection.is_closed:
            await self.disconnect()
        if self._exchange is None:
            await self._connect()
        if self._exchange is None or not self.connected:
            raise BrokerUnavailableError("not connected to the broker; reconnecting")
        return self._exchange

    async def _connect(self) -> None:
        # What aio_pika.connect_robust() does, but holding the connection before connecting,
        # so that a failed or cancelled (shutdown, flush deadline) connect is closed rather
        # than left reconnecting in the background.
        connection = aio_pika.RobustConnection(
            make_url(self._url),
            client_properties={"connection_name": self._name},
            reconnect_interval=self._reconnect_interval_s,
        )
        try:
            # One deadline for the handshake, the channel and the exchange: a broker that
            # accepts and then stops answering must not wedge the publisher.
            async with asyncio.timeout(self._connect_timeout_s):
                await connection.connect(timeout=self._connect_timeout_s)
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.declare_exchange(
                    self._exchange_name, ExchangeType.TOPIC, durable=True
                )
        except BaseException:
            await close(connection)
            raise
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_connection_lost)
        self._connection, self._channel, self._exchange = connection, channel, exchange
        log.info(
            "event_publisher_connected", url=redact_url(self._url), exchange=self._exchange_name
        )

    async def disconnect(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._exchange = None
        if connection is not None:
            await close(connection)

    def _on_reconnect(self, *_: object) -> None:
        self._reconnected.set()

    def _on_connection_lost(self, _: object, exc: BaseException | None) -> None:
        if not self._closing.is_set() and exc is not None:
            log.debug("event_broker_connection_lost", error=self._scrubber.error(exc))


async def close(connection: AbstractRobustConnection) -> None:
    """Close, but never wait on a dead peer for more than ``CLOSE_TIMEOUT_S``."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await connection.close()
