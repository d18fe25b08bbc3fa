"""The server's event loop: uvloop by default where installed, asyncio's on request, a bad name refused at start."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import uvloop

from service.event_loop import loop_factory
from tests.serving import ROOT


def test_auto_and_uvloop_build_uvloop_and_asyncio_builds_the_default():
    for name in ("auto", "uvloop"):
        factory = loop_factory(name)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    assert loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)


def test_an_unknown_loop_is_refused():
    with pytest.raises(ValueError, match="event_loop must be one of"):
        loop_factory("trio")


def test_the_server_refuses_an_unknown_loop_at_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "service", "--event-loop", "trio", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "event_loop must be one of" in done.stderr
