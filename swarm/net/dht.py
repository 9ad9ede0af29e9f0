"""Start a hivemind DHT node that validates swarm records and never outlives its parent.

Cleanup works in two layers, both installed inside the DHT child process by SwarmDHT.run:
  * p2pd is spawned with PR_SET_PDEATHSIG=SIGTERM (asyncio's create_subprocess_exec is
    wrapped in the child only), so the kernel ends p2pd whenever the DHT child exits,
    however it exits (shutdown, SIGTERM from multiprocessing at exit, SIGKILL, crash).
  * a watchdog thread polls os.getppid(); once the process that created the DHT is gone
    (SIGKILL leaves the DHT child running, reparented), it terminates the child's own
    children (p2pd) explicitly, reaps them, and exits.
"""

from __future__ import annotations

import asyncio.subprocess as aio_subprocess
import concurrent.futures
import ctypes
import logging
import os
import signal
import sys
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
from swarm.net.identity import Identity
from swarm.net.validation import CycleHorizon, SchemaCheck

logger = logging.getLogger(__name__)

__all__ = ["SwarmDHT", "default_validators", "dht_time", "start_dht", "visible_maddrs"]

dht_time = get_dht_time
PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL = 0.5
CALL_TIMEOUT = 120.0


def _p2pd_preexec() -> None:
    """preexec_fn for p2pd: die with the DHT process, and stay out of the terminal's Ctrl-C.

    PR_SET_PDEATHSIG makes the kernel send SIGTERM once the spawning thread's process dies.
    Its own process group keeps a Ctrl-C aimed at the peer from killing p2pd before the peer
    has shut the DHT down cleanly (which otherwise costs the 3 s shutdown grace period).
    """
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - non-Linux: the watchdog still covers the parent-death case
        pass


def _tie_subprocesses_to_this_process() -> None:
    """In the DHT child only: make every subprocess asyncio spawns (p2pd) die with us."""
    if not sys.platform.startswith("linux"):
        return
    original = aio_subprocess.create_subprocess_exec

    async def create_subprocess_exec(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("preexec_fn", _p2pd_preexec)
        return await original(*args, **kwargs)

    aio_subprocess.create_subprocess_exec = create_subprocess_exec


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc (no psutil dependency)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def terminate_children(grace: float = 3.0) -> None:
    """SIGTERM this process's children, SIGKILL whatever is left after `grace`, and reap them."""
    pids = _children(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _watch_parent(parent_pid: int) -> None:
    """Runs in the DHT child for its whole life: exit once the creating process is gone."""
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if os.getppid() != parent_pid:
            try:
                logger.warning("parent process %d is gone; DHT node %d exits", parent_pid, os.getpid())
                terminate_children()
            finally:
                os._exit(0)


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
        _tie_subprocesses_to_this_process()
        threading.Thread(target=_watch_parent, args=(self._parent_pid,), name="swarm-dht-watchdog", daemon=True).start()
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
        finally:
            if locked:
                self._call_lock.release()


def default_validators(identity: Identity, run_id: str | None = None,
                       horizon: CycleHorizon | None = None) -> list[RecordValidatorBase]:
    """Signature check with this peer's key (signs our records) + swarm schema check."""
    return [RSASignatureValidator(identity.private_key), SchemaCheck(run_id=run_id, horizon=horizon)]


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


def start_dht(
    identity: Identity,
    initial_peers: Sequence[str] = (),
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    announce_maddrs: Sequence[str] | None = None,
    record_validators: Sequence[RecordValidatorBase] | None = None,
    startup_timeout: float = 30.0,
    *,
    run_id: str | None = None,
    horizon: CycleHorizon | None = None,
    client_mode: bool = False,
    check_identity_free: bool = True,
    **dht_kwargs: Any,
) -> SwarmDHT:
    """Start a DHT node under the identity's stable peer id, or raise a one-line SwarmError.

    record_validators=None means default_validators(identity, run_id, horizon).
    """
    initial = _check_maddrs(initial_peers, "initial peer", need_peer_id=True)
    hosts = _check_maddrs(host_maddrs, "host address", need_peer_id=False)
    announce = _check_maddrs(announce_maddrs, "announce address", need_peer_id=False) if announce_maddrs else None
    if record_validators is None:
        validators = default_validators(identity, run_id, horizon)
    else:
        validators = list(record_validators)
    dht = SwarmDHT(
        initial_peers=initial or None,
        start=False,
        record_validators=validators,
        host_maddrs=hosts,
        announce_maddrs=announce,
        identity_path=str(identity.p2p_identity_path),
        startup_timeout=startup_timeout,
        client_mode=client_mode,
        check_if_identity_free=check_identity_free,
        **dht_kwargs,
    )
    unreachable = SwarmError(
        f"could not reach any initial peer ({', '.join(initial)}): "
        "check the address and that the bootstrap node is running"
    )
    started = time.monotonic()
    dht.run_in_background(await_ready=False)
    try:
        dht.wait_until_ready(timeout=startup_timeout)
    except concurrent.futures.TimeoutError:
        _stop(dht)
        if initial:
            raise unreachable from None
        raise SwarmError(f"the DHT node did not start within {startup_timeout:g}s: raise the startup timeout") from None
    except Exception as e:  # noqa: BLE001 - translated into one readable line
        _stop(dht)
        text = " ".join(str(e).split())
        if "already taken" in text:
            raise SwarmError(
                f"identity {identity.path} is in use by another running peer: stop it or use another identity file"
            ) from None
        if initial and ("bootstrap" in text or "initial_peers" in text):
            raise unreachable from None
        if "address already in use" in text.lower():
            raise SwarmError(f"a host address in {', '.join(hosts)} is already in use: pick another port") from None
        raise SwarmError(f"the DHT node failed to start ({text}): check its addresses and identity") from None
    logger.info("DHT node %s up in %.2fs", identity.peer_key, time.monotonic() - started)
    return dht


def visible_maddrs(dht: DHT) -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) that others can join or dial this node with."""
    return [str(m) for m in dht.get_visible_maddrs()]
