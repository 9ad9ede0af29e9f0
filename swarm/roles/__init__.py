"""The roles a peer can take; each file holds everything that role does in one cycle, top to bottom."""

from swarm.roles.base import Role
from swarm.roles.miner import Miner
from swarm.roles.validator import Validator

ROLES: dict[str, type[Role]] = {"miner": Miner, "validator": Validator}

__all__ = ["ROLES", "Miner", "Role", "Validator"]
