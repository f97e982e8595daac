"""The hub's server-side publish entry points: `publish`, `send_to_user`, `broadcast`.

`Publishing` is the part of the `Hub` facade that checks a publication (channel
name, idempotency key), runs the namespace's model and ``on_publish`` hooks on it
and hands it to `Delivery`; and that sends the user and broadcast channels'
messages and the disconnect-user command.
"""

from __future__ import annotations

from wshub.core.channels import BROADCAST_CHANNEL, is_valid_channel, user_channel
from wshub.core.errors import CloseCode
from wshub.core.types import MAX_IDEMPOTENCY_KEY, Idempotency, PublishResult
from wshub.hub.delivery import Delivery
from wshub.hub.publish_hooks import Prepared, PublishPipeline
from wshub.hub.recovery import Recovery
from wshub.settings import Settings

__all__ = ["Publishing"]


class Publishing:
    """Publish from the server: checks, hooks, then `Delivery`.

    Args:
        settings: the hub's settings (read for ``idempotency_window`` at each publish).
        pipeline: the namespace models and ``on_publish`` hooks.
        recovery: which channels keep history, and how.
        delivery: the publish and fan-out part.
    """

    def __init__(
        self, settings: Settings, pipeline: PublishPipeline, recovery: Recovery, delivery: Delivery
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.recovery = recovery
        self.delivery = delivery

    async def publish(
        self,
        channel: str,
        data: object,
        *,
        origin: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish ``data`` to every member of ``channel`` in every process.

        With a namespace model or ``on_publish`` hooks, ``data`` is validated and
        passed through the hooks first (``conn`` None), and their result is published.

        Args:
            channel: the channel name.
            data: any JSON-representable value; encoded once, here.
            origin: the publishing connection's id, sent to subscribers as ``from``.
            idempotency_key: 1 to 64 characters: a publish with the same key to the
                same channel within ``idempotency_window`` seconds publishes nothing
                and returns the first one's result (retry `PublishTimeout` with it).

        Returns:
            The broker's result (the offset, when the channel keeps history).

        Raises:
            InvalidPublication: ``data`` does not fit the namespace's model (a
                `PublishError`; its message names the field).
            RPCError: an ``on_publish`` hook refused the publication.
            PublishError: JSON cannot represent ``data``.
            ValueError: the channel name (or the idempotency key) is invalid.
            PublishTimeout: sent to the broker, no answer in time: outcome unknown.
            BrokerUnavailable: the broker is down; nobody received the publication.
        """
        if not is_valid_channel(channel):
            raise ValueError(f"invalid channel name {channel!r}")
        once = None
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not (
                0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
            ):
                raise ValueError(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
            once = Idempotency(idempotency_key, self.settings.idempotency_window)
        if type(data) is Prepared:
            # Prepared by the protocol endpoint, in frame order: no await before the broker.
            data = data.data
        elif self.pipeline.needed(channel):
            data = await self.pipeline.prepare(None, channel, data)
        history = self.recovery.history_options(channel)
        return await self.delivery.publish(channel, data, origin, history, once)

    async def send_to_user(self, user: str, data: object) -> PublishResult:
        """Send ``data`` to every connection of ``user``, in every process.

        Protocol clients receive it as a message on channel ``#user:<user>``.
        """
        return await self.delivery.publish(user_channel(user), data, None, None)

    async def broadcast(self, data: object) -> PublishResult:
        """Send ``data`` to every connection of every process (protocol channel ``#all``)."""
        return await self.delivery.publish(BROADCAST_CHANNEL, data, None, None)

    async def disconnect_user(
        self, user: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close every connection of ``user``, in every process sharing the broker.

        Returns once the broker took the command (see `Delivery.disconnect_user`).

        Raises:
            ValueError: ``code`` is not one a server may send.
            BrokerUnavailable: the broker is down; nothing was closed.
        """
        await self.delivery.disconnect_user(user_channel(user), code, reason)
