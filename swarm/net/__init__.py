"""The network room: a hivemind DHT node that reaps its daemons, peer identities, signed and
schema-checked records, and content-addressed payload transfer over libp2p streams."""
