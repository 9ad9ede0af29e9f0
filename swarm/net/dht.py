"""Start a hivemind DHT node that validates swarm records and never outlives its parent (how: swarm/net/reap.py)."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from hivemind.dht import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils.multiaddr import Multiaddr
from hivemind.utils.timed_storage import get_dht_time

from swarm.errors import SwarmError
from swarm.net import futurelocks
from swarm.net.identity import Identity
from swarm.net.probe import explain
from swarm.net.reap import tie_subprocesses_to_this_process, watch_parent
from swarm.net.validation import BoundedStorage, CycleHorizon, OwnerKeyCheck, SchemaCheck, install_bounded_storage

logger = logging.getLogger(__name__)

__all__ = ["SwarmDHT", "default_validators", "dht_time", "ping_nodes", "start_dht", "visible_maddrs"]

dht_time = get_dht_time
CALL_TIMEOUT = 120.0
RETRY_PAUSE = 2.0  # seconds between attempts to reach the initial peers
STARTUP_TIMEOUT = 30.0  # seconds a node may take to start when the caller names none (tests raise it)
futurelocks.install()  # before any DHT child is forked: a child killed holding one must not hang the next


class SwarmDHT(DHT):
    """hivemind's DHT with the cleanup above, a call lock, and bounded call times."""

    def __init__(self, *args: Any, call_timeout: float = CALL_TIMEOUT, **kwargs: Any):
        self._call_lock = threading.RLock()
        self.call_timeout = call_timeout
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        """Entry point of the DHT child process: arm the cleanup, then serve as usual."""
        # a SIGTERM handler the creator installed is inherited through fork; left in place it
        # would swallow multiprocessing's terminate() and hang the creator's exit forever
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        tie_subprocesses_to_this_process()
        threading.Thread(target=watch_parent, args=(self._parent_pid,), name="swarm-dht-watchdog", daemon=True).start()
        super().run()

    def _call(self, method: Any, *args: Any, return_future: bool = False, **kwargs: Any) -> Any:
        """One request at a time through the pipe (concurrent senders hung hivemind), with a deadline."""
        with self._call_lock:
            future = method(*args, return_future=True, **kwargs)
            if return_future:
                return future
            try:
                return future.result(self.call_timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                alive = "alive" if self.is_alive() else "dead"
                raise SwarmError(
                    f"DHT call timed out after {self.call_timeout:g}s (DHT process {alive}): restart the peer"
                ) from None

    def get(self, key: Any, latest: bool = False, return_future: bool = False, **kwargs: Any) -> Any:
        """DHT.get under the call lock."""
        return self._call(super().get, key, latest=latest, return_future=return_future, **kwargs)

    def store(
        self,
        key: Any,
        value: Any,
        expiration_time: float,
        subkey: Any = None,
        return_future: bool = False,
        **kwargs: Any,
    ) -> Any:
        """DHT.store under the call lock."""
        return self._call(
            super().store, key, value, expiration_time, subkey=subkey, return_future=return_future, **kwargs
        )

    def run_coroutine(self, coro: Any, return_future: bool = False) -> Any:
        """DHT.run_coroutine under the call lock."""
        return self._call(super().run_coroutine, coro, return_future=return_future)

    def shutdown(self) -> None:
        """Stop the node; waits briefly for a call in flight rather than racing it on the pipe."""
        locked = self._call_lock.acquire(timeout=self.shutdown_timeout)
        try:
            super().shutdown()
            if self.pid is not None and self.exitcode is None:  # terminated after the grace period
                self.join(5)
        finally:
            if locked:
                self._call_lock.release()
            _reclaim(self)


def default_validators(identity: Identity, run_id: str | None = None,
                       horizon: CycleHorizon | None = None) -> list[RecordValidatorBase]:
    """Canonical owner key first (OwnerKeyCheck, before any RSA check), the signature check with this peer's
    key (signs our records), then the swarm schema check with the run's cycle window and allowlists."""
    return [OwnerKeyCheck(), RSASignatureValidator(identity.private_key), SchemaCheck(run_id=run_id, horizon=horizon)]


def _check_maddrs(maddrs: Sequence[str], what: str, need_peer_id: bool) -> list[str]:
    """Parse multiaddrs up front so a typo is reported as such, not as a timeout."""
    out = []
    for m in maddrs:
        try:
            parsed = Multiaddr(str(m))
        except Exception as e:  # noqa: BLE001 - multiaddr raises several types
            raise SwarmError(f"{what} '{m}' is not a multiaddr ({e}): use the form /ip4/1.2.3.4/tcp/31337") from None
        if need_peer_id and "/p2p/" not in str(parsed):
            raise SwarmError(
                f"{what} '{m}' has no /p2p/<peer id> part: copy a full JOIN line printed by python -m bootstrap"
            )
        out.append(str(parsed))
    return out


def _stop(dht: SwarmDHT) -> None:
    """Get rid of a DHT child that failed to start (its p2pd follows via PDEATHSIG)."""
    if dht.is_alive():
        dht.terminate()
    dht.join(5)
    _reclaim(dht)


def _reclaim(dht: SwarmDHT) -> None:
    """A dead DHT child's hold on hivemind's shared MPFuture locks, released (swarm/net/futurelocks.py)."""
    if dht.pid is not None and dht.exitcode is not None:
        released = futurelocks.reclaim(dht.pid)
        if released:
            logger.info("released %s, held by the stopped DHT process %d", ", ".join(released), dht.pid)


def start_dht(
    identity: Identity,
    initial_peers: Sequence[str] = (),
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    announce_maddrs: Sequence[str] | None = None,
    record_validators: Sequence[RecordValidatorBase] | None = None,
    startup_timeout: float | None = None,
    *,
    run_id: str | None = None,
    horizon: CycleHorizon | None = None,
    client_mode: bool = False,
    check_identity_free: bool = True,
    **dht_kwargs: Any,
) -> SwarmDHT:
    """Start a DHT node under the identity's stable peer id, or raise a one-line SwarmError.

    record_validators=None means default_validators(identity, run_id, horizon). Whatever the validators,
    the node keeps its records in a validation.BoundedStorage (a cap per key and in all; the horizon's
    allowlisted validators exempt), installed in the DHT process as soon as the node is up.
    """
    startup_timeout = STARTUP_TIMEOUT if startup_timeout is None else startup_timeout
    initial = _check_maddrs(initial_peers, "initial peer", need_peer_id=True)
    hosts = _check_maddrs(host_maddrs, "host address", need_peer_id=False)
    announce = _check_maddrs(announce_maddrs, "announce address", need_peer_id=False) if announce_maddrs else None
    if record_validators is None:
        validators = default_validators(identity, run_id, horizon)
    else:
        validators = list(record_validators)
    started = time.monotonic()
    retry_in_use = False
    while True:
        left = startup_timeout - (time.monotonic() - started)
        dht = SwarmDHT(
            initial_peers=initial or None,
            start=False,
            record_validators=validators,
            host_maddrs=hosts,
            announce_maddrs=announce,
            identity_path=str(identity.p2p_identity_path),
            startup_timeout=max(left, 1.0),
            client_mode=client_mode,
            check_if_identity_free=check_identity_free,
            **dht_kwargs,
        )
        dht.run_in_background(await_ready=False)
        try:
            dht.wait_until_ready(timeout=max(left, 1.0))
            break
        except concurrent.futures.TimeoutError:
            _stop(dht)
            if initial:
                raise SwarmError(explain(initial, time.monotonic() - started)) from None
            raise SwarmError(f"the DHT node did not start within {startup_timeout:g}s: raise the startup timeout") \
                from None
        except Exception as e:  # noqa: BLE001 - translated into one readable line
            _stop(dht)
            text = " ".join(str(e).split())
            pinged = initial and ("bootstrap" in text or "initial_peers" in text)
            # a busy bootstrap node can miss hivemind's 3 s ping: ask again while the startup time lasts (the
            # previous attempt's daemon may hold the identity for a moment, so that is retried too); hivemind's
            # identity check starts a daemon of its own that must be up in 15 s, which a loaded machine missed
            slow_daemon = "Daemon failed to start" in text
            if (pinged or slow_daemon or (retry_in_use and "already taken" in text)) and \
                    time.monotonic() - started < startup_timeout - RETRY_PAUSE:
                logger.info("%s (%s); retrying", "a p2p daemon was slow to start" if slow_daemon else
                            "no initial peer answered yet", text[:80])
                retry_in_use = True
                time.sleep(RETRY_PAUSE)
                continue
            if "already taken" in text:
                raise SwarmError(f"identity {identity.path} is in use by another running peer: stop it or use "
                                 "another identity file") from None
            if pinged:
                raise SwarmError(explain(initial, time.monotonic() - started)) from None
            if "address already in use" in text.lower():
                raise SwarmError(f"a host address in {', '.join(hosts)} is already in use: pick another port") \
                    from None
            raise SwarmError(f"the DHT node failed to start ({text}): check its addresses and identity") from None
    storage = BoundedStorage(allowlist=horizon.validators if horizon is not None else ())
    try:
        dht.run_coroutine(functools.partial(install_bounded_storage, storage))
    except BaseException:
        dht.shutdown()
        raise
    logger.info("DHT node %s up in %.2fs", identity.peer_key, time.monotonic() - started)
    return dht


def visible_maddrs(dht: DHT) -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) that others can join or dial this node with."""
    return [str(m) for m in dht.get_visible_maddrs()]


def ping_nodes(dht: DHT, peer_ids: Sequence[str]) -> set[str]:
    """Ping these DHT nodes (p2pd must know their addresses) so that each routing table holds the other; the
    ones that answered. A peer that joined through one bootstrap node may know no other node yet, and when
    that node dies it reads and stores nothing (seen in the network lab)."""
    return dht.run_coroutine(functools.partial(_ping, list(peer_ids))) if peer_ids else set()


async def _ping(peer_ids: list[str], _dht: DHT, node: Any) -> set[str]:
    """In the DHT process (run_coroutine pickles it: a module-level function)."""
    import asyncio

    from hivemind.p2p import PeerID

    found = await asyncio.gather(*(node.protocol.call_ping(PeerID.from_base58(p)) for p in peer_ids))
    return {p for p, f in zip(peer_ids, found, strict=True) if f is not None}
