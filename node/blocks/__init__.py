"""Blocks on a node's disk: the checksummed, immutable block store."""
