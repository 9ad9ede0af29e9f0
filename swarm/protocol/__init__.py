"""The protocol room: the run manifest and its clock, the runtime every peer derives from it, the
resumable store, the merge rule and outer step (consensus), and the cycle loop that calls the roles."""
