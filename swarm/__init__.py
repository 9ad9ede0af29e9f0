"""TEFT swarm: the peer-to-peer network around the teft method.

Rooms: `swarm.net` (DHT node, identity, signed records, payload transfer), `swarm.protocol` (manifest,
clock, runtime, store, consensus and the cycle loop), `swarm.roles` (what a miner and a validator do in
one cycle), `swarm.sim` (localhost simulation, adversaries, baselines, report). `peer`, `status`,
`keygen` and `launch` are the thin command-line entry points.
"""

import os

# hivemind switches torch to the file_system sharing strategy at import time, which
# leaks /dev/shm segments when peers die; every swarm module imports this package
# first, so setting the variable here wins as long as nothing imported hivemind earlier.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

from teft import version  # noqa: E402 - after the sharing-strategy default; teft imports no hivemind

VERSION = version()  # the one version string (pyproject.toml): peers announce it, every CLI prints it
