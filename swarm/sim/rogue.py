"""`python -m swarm.sim.rogue --adversary KIND ...`: a misbehaving peer for simulations and tests.

Takes every `python -m swarm.peer` flag plus --adversary; --role must be the role the adversary poses as.
"""

from __future__ import annotations

import sys

from swarm import cli
from swarm.peer import build_parser, main
from swarm.sim.adversaries import ADVERSARIES, role_for, role_kind


def run(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m swarm.sim.rogue")
    parser.add_argument("--adversary", required=True, choices=sorted(ADVERSARIES), help="how to misbehave")
    args, _ = parser.parse_known_args(argv)
    if role_kind(args.adversary) != args.role:
        return cli.fail(f"--adversary {args.adversary} is a {role_kind(args.adversary)}: pass that --role")
    return main(argv, make_role=role_for(args.adversary), parser=parser)


if __name__ == "__main__":
    sys.exit(run())
