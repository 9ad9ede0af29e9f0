"""A join that fails says why for each initial peer, tried at once (swarm/net/probe.py)."""

from __future__ import annotations

import socket
import time

import pytest

from swarm.errors import SwarmError
from swarm.net.dht import start_dht


def test_each_initial_peer_named_with_its_failure(make_identity):
    ghost = make_identity("ghost").peer_key
    with socket.socket() as closed, socket.socket() as mute:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        mute.bind(("127.0.0.1", 0))
        mute.listen()  # accepts TCP, speaks no libp2p
        refused = f"/ip4/127.0.0.1/tcp/{closed.getsockname()[1]}/p2p/{ghost}"
        silent = f"/ip4/127.0.0.1/tcp/{mute.getsockname()[1]}/p2p/{ghost}"
        started = time.monotonic()
        with pytest.raises(SwarmError) as err:
            start_dht(make_identity("me"), initial_peers=[refused, silent], startup_timeout=6)
    msg = str(err.value)
    assert time.monotonic() - started < 25
    assert "\n" not in msg and msg.startswith("could not reach any initial peer: none of the 2 answered within")
    assert f"{refused} refused" in msg and "bootstrap node is running" in msg
    assert f"{silent} answered TCP" in msg
