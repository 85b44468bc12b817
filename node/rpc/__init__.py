"""The wire: the sans-IO msgpack-RPC protocol with its handshake, and its client and server
trio shells."""
