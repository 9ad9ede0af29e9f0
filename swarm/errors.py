"""Exceptions a swarm user can act on; each message is one line naming the fix."""


class SwarmError(ValueError):
    """A problem the user can fix (bad path, bad manifest, unreachable peer): one readable line."""


class RecordError(SwarmError):
    """A DHT record the caller tried to write breaks its schema or size cap."""


class TransferError(RuntimeError):
    """A payload could not be fetched from a peer; the message names peer, hash and reason."""
