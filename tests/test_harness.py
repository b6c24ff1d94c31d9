"""The harness itself: real servers answer, and the leaked-task check catches leaks."""

from __future__ import annotations

import inspect

import nats
import pytest
import redis.asyncio as aioredis


async def test_real_redis_server_answers(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping() is True
        info = await client.info("server")
        assert "redis_version" in info
    finally:
        await client.aclose()


async def test_real_nats_server_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        assert info.limits is not None
    finally:
        await nc.close()


def test_leak_check_fails_a_leaking_test(pytester: pytest.Pytester) -> None:
    from tests.support import leaks

    pytester.makeconftest(inspect.getsource(leaks))
    pytester.makepyfile(
        """
        import asyncio

        async def test_leaks():
            asyncio.get_running_loop().create_task(asyncio.sleep(30))
        """
    )
    result = pytester.runpytest_subprocess("-p", "asyncio", "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=1, errors=1)  # the teardown fails the test
    result.stdout.fnmatch_lines(["*left 1 asyncio task(s) running*"])
