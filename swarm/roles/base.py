"""What every role does in a cycle: announce itself in sync, and take part in the reduce.

The reduce is the same on every peer, whatever its role: read the signed rankings, decide by the one
merge rule (swarm.protocol.consensus), fetch the merged payloads (from validators first), decode their
pseudo-gradients with the run's codec, apply the Nesterov outer step to their mean, hold Phi_{c+1}, and
publish its hash so the quorum's agreement can be checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time

from swarm import VERSION
from swarm.net import records
from swarm.net.identity import peer_key_of
from swarm.net.pieces import PIECE, pieces_root
from swarm.protocol.consensus import decide, reduce
from swarm.protocol.cycle import Peer
from swarm.protocol.cyclelog import Cycle
from teft.codec import check_delta
from teft.errors import TeftError
from teft.outer import checkpoint_bytes
from teft.state import state_hash

logger = logging.getLogger("swarm.peer")
MERGED_FETCH_BUDGET_S = 60.0  # for every merged payload of a cycle together; one holder gets a quarter of it


class Role:
    """The phases a role may act in; the base class announces the peer and reduces."""

    kind = "peer"
    variant: str | None = None  # set only by swarm.sim's misbehaving subclasses, for their logs

    def __init__(self, peer: Peer):
        self.peer = peer
        self.decided: tuple[int, set[str]] = (-1, set())  # (cycle, miners its reduce decided to merge)

    @classmethod
    def record_validators(cls, identity, run_id: str, horizon) -> list | None:
        """The DHT node's record validators for this role; None: the defaults (swarm.net.dht.default_validators).

        The one hook a role has into its DHT node, read before the node starts: a simulation's misbehaving
        role may sign for throwaway keys or skip the schema check; honest roles keep the defaults.
        """
        return None

    def on_sync(self, cycle: Cycle) -> None:
        p = self.peer
        p.put(cycle.number, "peers", records.PeerRecord(role=self.kind, version=VERSION,
                                                        maddrs=records.announceable(p.net.maddrs)))

    def on_train(self, cycle: Cycle) -> None:
        pass

    def on_commit(self, cycle: Cycle) -> None:
        pass

    def on_reveal(self, cycle: Cycle) -> None:
        pass

    def on_evaluate(self, cycle: Cycle) -> None:
        pass

    def on_reduce(self, cycle: Cycle) -> None:
        """Merge what the allowlisted validators' rankings decided; every honest peer computes the same bytes."""
        p, log, c = self.peer, cycle.log, cycle.number
        decision = decide(p.get(c, "ranking"), p.manifest)
        self.decided = (c, {m.miner for m in decision.merged})
        log.quorum_met = decision.quorum_met
        log.rankings = {peer_key_of(v): s for v, s in decision.scores.items()}
        for (miner, _), median in decision.medians.items():
            log.medians[miner] = max(median, log.medians.get(miner, 0.0))
        validators = [peer_key_of(v) for v in decision.validators]
        wanted = []
        for merged in decision.merged:
            # validators already hold it: ask them first so the miner uploads as little as possible, each
            # peer in its own order so the load spreads over the validators
            order = sorted(validators, key=lambda v: hashlib.sha256(f"{p.me}/{v}/{merged.payload_hash}".encode())
                           .digest())
            wanted.append((merged.payload_hash, [*order, merged.miner]))
        # a payload of more than one piece comes in pieces from the validators at once (the miner stands by):
        # its pieces root is in the miner's signed reveal
        roots = p.payload_roots(c) if wanted and p.rt.payload_size > PIECE else {}
        started, got = time.monotonic(), {}
        with contextlib.closing(p.fetch_stream(wanted, c, p.rt.payload_size, MERGED_FETCH_BUDGET_S, roots=roots,
                                               spread=len(validators))) as arrivals:
            for i, data, error in arrivals:  # all at once: one at a time cost a round of DHT and stream setup each
                if data is None:
                    logger.warning("cycle %d: cannot fetch merged payload %s: %s; will fetch the agreed state",
                                   c, wanted[i][0][:12], error)
                    log.note += "missing a merged payload; "
                    return
                got[i] = data
        if len(got) < len(wanted):
            log.note += "missing a merged payload; "
            return
        deltas = []
        # summed in one order whatever the medians: peers that read different rankings but merge the same set
        # compute the same bytes (in the ranking's order, a float sum in another order split honest states once)
        canonical = sorted(range(len(decision.merged)),
                           key=lambda j: (decision.merged[j].miner, decision.merged[j].payload_hash))
        for i in canonical:
            merged = decision.merged[i]
            reason = None
            try:
                delta = p.rt.codec.decode(got[i])
                reason = check_delta(delta, p.manifest.max_delta_norm)
            except TeftError as err:
                reason = str(err)
            if reason is not None:  # the validators checked it; a peer checks again before it trusts bytes
                logger.warning("cycle %d: merged payload %s is unusable (%s)", c, merged.payload_hash[:12], reason)
                log.note += "unusable merged payload; "
                return
            deltas.append(delta)
        if wanted:
            logger.info("cycle %d: %d merged payload(s) in hand after %.1fs", c, len(wanted),
                        time.monotonic() - started)
        log.merged = [m.miner for m in decision.merged]
        new_state, new_momentum = reduce(p.state, p.momentum, deltas, p.rt.outer)
        data = checkpoint_bytes(new_state, new_momentum)
        p.before_reduce = (p.cycle, p.progress.checkpoint_hash)  # carried forward instead if no quorum agrees
        p.adopt(c + 1, data)
        log.state_hash = state_hash(data)
        p.put(c, "state", records.StateRecord(state_hash=log.state_hash, pieces=pieces_root(data)))
