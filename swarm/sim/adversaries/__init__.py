"""Misbehaving peers, the only place they exist: each is a role subclass registered in ADVERSARIES.

The simulator starts them with `python -m swarm.sim.rogue --adversary KIND ...` (the peer command plus
that flag), so the honest code path holds no adversary branch at all. Each one attacks one protocol
promise; the tests and the report check that it is stopped.

    payload    malformed or unearned payloads, late and copied commits, a lying validator
    flood      sybil-flood: many throwaway keys commit and reveal what nobody serves; seed-grinder: reveals
               only the keys the validators' seeds order first, each at an address that never speaks
    stalling   slow-server (never sends what it revealed), slowloris (idle streams to validators), slow-reader
               (reads every revealed payload from throwaway keys and never acknowledges)
    state      state-liar: a crafted state hash, claimed ahead, served as a checkpoint that does not fit;
               state-forger: an allowlisted validator's crafted state of the right shapes, ground to win a tie
    dhtabuse   dht-blinder (a non-canonical subkey), subkey-spammer (1000 subkeys under one key)
    overfit    val-overfit: trains on the public validation split
    drift      general-harm: trains on L_target - 0.5 L_general, so its update costs general text while it gains
"""

from __future__ import annotations

from swarm.sim.adversaries.dhtabuse import DhtBlinder, SubkeySpammer
from swarm.sim.adversaries.drift import GeneralHarm
from swarm.sim.adversaries.flood import SeedGrinder, SybilFlood
from swarm.sim.adversaries.overfit import ValOverfit
from swarm.sim.adversaries.payload import Copycat, FreeRider, Late, Liar, PayloadMiner, Replay, corrupt
from swarm.sim.adversaries.stalling import Slowloris, SlowReader, SlowServer
from swarm.sim.adversaries.state import StateForger, StateLiar

_PAYLOAD_KINDS = ("noise", "poison", "nan", "oversize", "wrong-shape", "extra-keys")
ADVERSARIES: dict[str, type] = {
    **{kind: PayloadMiner for kind in _PAYLOAD_KINDS},
    "free-rider": FreeRider,
    "copycat": Copycat,
    "replay": Replay,
    "late": Late,
    "liar": Liar,
    "stranger": Liar,  # the same liar, left off the allowlist by the simulator
    "sybil-flood": SybilFlood,
    "seed-grinder": SeedGrinder,
    "slow-server": SlowServer,
    "slowloris": Slowloris,
    "slow-reader": SlowReader,
    "state-liar": StateLiar,
    "state-forger": StateForger,
    "dht-blinder": DhtBlinder,
    "subkey-spammer": SubkeySpammer,
    "val-overfit": ValOverfit,
    "general-harm": GeneralHarm,
}
NEW = ("sybil-flood", "seed-grinder", "slow-server", "slowloris", "slow-reader", "state-liar", "state-forger",
       "dht-blinder", "subkey-spammer", "val-overfit", "general-harm")
SHOWN = ("free-rider", "noise", "poison", "nan", "oversize", "copycat", "replay", "late", "liar", *NEW)  # `all`
EXTRA = ("wrong-shape", "extra-keys", "stranger")  # for the tests

__all__ = ["ADVERSARIES", "EXTRA", "NEW", "SHOWN", "corrupt", "role_for", "role_kind"]


def role_for(kind: str) -> type:
    """The adversary's role class, labelled with its kind: the peer loop calls it with itself, and
    swarm.peer reads its `record_validators` hook before the DHT node starts."""
    cls = ADVERSARIES[kind]
    return type(f"{cls.__name__}[{kind}]", (cls,), {"variant": kind})


def role_kind(kind: str) -> str:
    """'miner' or 'validator': which honest role the adversary poses as."""
    return ADVERSARIES[kind].kind
