"""TEFT swarm: the peer-to-peer network around the teft method."""

import os

# hivemind switches torch to the file_system sharing strategy at import time, which
# leaks /dev/shm segments when peers die; every swarm module imports this package
# first, so setting the variable here wins as long as nothing imported hivemind earlier.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")
