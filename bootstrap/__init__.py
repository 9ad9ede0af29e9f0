"""DHT-only entry node with a stable identity: `python -m bootstrap`."""
