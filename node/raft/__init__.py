"""Raft consensus: the sans-IO core and its values, the durable log, the trio shell that drives
the core, and the transport between members."""
