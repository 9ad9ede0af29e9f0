"""`python -m swarm.simulate`: a whole swarm on localhost (the harness lives in swarm/sim/simulate.py)."""

import sys

from swarm.sim.simulate import main

if __name__ == "__main__":
    sys.exit(main())
