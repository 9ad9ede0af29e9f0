"""`python -m bootstrap`: a DHT-only entry node (the node itself is swarm/bootstrap.py)."""

import sys

from swarm.bootstrap import main

if __name__ == "__main__":
    sys.exit(main())
