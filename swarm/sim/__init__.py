"""The experiment room: localhost swarms of real peer processes, the adversaries (the only place
they exist), baselines on the same token budget, and the report with its plots."""
