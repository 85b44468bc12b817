"""A storage node and how to talk to one: one subpackage per concern, wired by `daemon`.

`rpc` is the wire, `raft` the consensus, `meta` the namespace it replicates, `blocks` the block
store, `cluster` placement. `service` is the table of RPC methods a node answers and `daemon`
starts a node process. Imports point from `daemon` and `service` into the rooms, never back.
"""
