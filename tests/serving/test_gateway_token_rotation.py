"""The feedback token is a file the gateway reads again when it changes: a Secret rotated in
place (the kubelet swaps the mounted file) takes effect without a restart, which would
empty the prediction log, and a file that goes missing or empty never opens /feedback."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway_upstreams import running_gateway, start_upstreams
from modelcycle.serving.gateway import GatewayConfig


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    with start_upstreams() as urls:
        yield urls


def _swap(path: Path, text: str) -> None:
    """Replace the file as the kubelet updates a mounted Secret: a new file renamed over it."""
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(text)
    os.utime(staged, (time.time() + 5, time.time() + 5))
    staged.replace(path)


async def _status(session: aiohttp.ClientSession, url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{url}/feedback", json={"request_id": "any", "label": 1}, headers=headers) as answer:
        return answer.status


async def test_a_rotated_token_file_takes_effect_without_a_restart(upstreams: dict[str, str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    config = GatewayConfig(production_url=upstreams["production"], log_dir=tmp_path / "log",
                           feedback_token="first-token", feedback_token_file=token_file)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        assert await _status(session, url, "first-token") == 202
        assert await _status(session, url, None) == 401
        _swap(token_file, "second-token\n")
        assert await _status(session, url, "second-token") == 202
        assert await _status(session, url, "first-token") == 401
        _swap(token_file, "")  # emptied by mistake: the last token holds
        assert await _status(session, url, None) == 401
        assert await _status(session, url, "second-token") == 202
        token_file.unlink()
        assert await _status(session, url, None) == 401
        assert await _status(session, url, "second-token") == 202
