"""Why none of the initial peers answered: each one dialled at once over plain TCP, each failure named.

hivemind says only "none of the initial_peers responded" (the most common complaint in its and its swarms'
trackers). A refused port, a host that never answers (a firewall, a NAT, a dead machine) and an address
that has no route are different fixes, so a failed join asks each initial peer once more, in parallel, and
says which it was.
"""

from __future__ import annotations

import concurrent.futures
import errno
import socket

from hivemind.utils.multiaddr import Multiaddr


def _target(maddr: str) -> tuple[str, int] | None:
    """(host, port) of a /ip4|ip6|dns.../tcp/PORT multiaddr; None for a form plain TCP cannot dial."""
    try:
        parts = Multiaddr(maddr.split("/p2p/", 1)[0]).items()
    except Exception:  # noqa: BLE001 - multiaddr raises several types; checked before this anyway
        return None
    host = next((str(v) for p, v in parts if p.name in ("ip4", "ip6", "dns", "dns4", "dns6")), None)
    port = next((int(v) for p, v in parts if p.name == "tcp"), None)
    return (host, port) if host is not None and port is not None else None


def probe(maddr: str, timeout: float) -> str:
    """One word or phrase for what a TCP dial to this address does: answered, refused, timed out, ..."""
    target = _target(maddr)
    if target is None:
        return "not a TCP address this check can dial"
    try:
        with socket.create_connection(target, timeout=timeout):
            return "answered TCP (so its libp2p or the peer id did not: is it the right /p2p/ id and run?)"
    except TimeoutError:
        return f"timed out after {timeout:g}s (a firewall, a NAT without a port forward, or the host is down)"
    except ConnectionRefusedError:
        return "refused (nothing listens on that port: check that the bootstrap node is running)"
    except socket.gaierror:
        return "name not found"
    except OSError as e:
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "unreachable (no route to that address from here)"
        return " ".join(str(e).split()) or type(e).__name__


def explain(initial_peers: list[str], waited: float, timeout: float = 5.0) -> str:
    """One line: every initial peer dialled in parallel, each with what became of it."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(initial_peers), 16) or 1) as pool:
        reasons = list(pool.map(lambda m: probe(m, timeout), initial_peers))
    shown = "; ".join(f"{m} {r}" for m, r in zip(initial_peers, reasons, strict=True))
    who = f"none of the {len(initial_peers)} answered" if len(initial_peers) > 1 else "it did not answer"
    return f"could not reach any initial peer: {who} within {waited:.0f}s: {shown}"
