"""The Python client reports an error once: raised to the caller, or logged, never printed."""

from __future__ import annotations

import logging

import pytest

from wshub.client import Client, ClientError

pytestmark = pytest.mark.anyio


async def test_a_refused_subscribe_is_raised_once_and_printed_never(
    hub_server, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = hub_server()
    caplog.set_level(logging.DEBUG, logger="wshub.client")
    async with Client(server.ws_url("/ws")) as client:
        with pytest.raises(ClientError) as raised:
            await client.subscribe("user:bob")  # a personal channel: not for anonymous clients
        assert raised.value.code == "forbidden"
        with pytest.raises(ClientError):
            await client.presence("room")  # no presence on this channel
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    client_records = [r for r in caplog.records if r.name.startswith("wshub.client")]
    assert all(r.levelno < logging.WARNING for r in client_records), client_records


async def test_an_error_nobody_awaits_goes_to_on_error_or_the_log(
    hub_server, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An error no call raises (here: reported as the reader reports error frames without
    an id): ``on_error`` gets it alone; without ``on_error``, one warning on wshub.client."""
    server, _ = hub_server()
    caplog.set_level(logging.DEBUG, logger="wshub.client")
    seen: list[ClientError] = []
    error = ClientError("bad_request", "unknown op 'bogus'")
    async with Client(server.ws_url("/ws"), on_error=seen.append) as client:
        client._report(error)
    assert seen == [error]
    assert not [r for r in caplog.records if "bogus" in r.getMessage()]
    async with Client(server.ws_url("/ws")) as client:
        client._report(error)
    warnings = [r for r in caplog.records if "bogus" in r.getMessage()]
    assert [(r.name, r.levelno) for r in warnings] == [("wshub.client", logging.WARNING)]
    out, err = capsys.readouterr()
    assert out == "" and err == ""
