"""Property-based fuzzing of everything a node decodes from the network.

Every input a peer controls goes through one of these: the frame decoder and the handshake
(`Connection`), the envelope (`parse_message`), each method's parameters (metadata commands and
queries, log entries, cluster maps, Paxos ballots and registers), and the Raft messages, which
a member's core then steps. The property: any input is either taken or refused with the error
the edge maps to a clear answer (`ProtocolError`, `AuthenticationError`, `NodeError`,
`ValueError`), never another exception; and a Raft core stepping any message that decodes
keeps its invariants (its term never goes back, its commit index never passes its log).

The default run draws `FAST` examples per target (each a list of inputs: a few thousand inputs
in all); the slow tier (`pytest -m slow`) draws `SLOW` per target, in `PARTS` tests each,
100,000 examples in all. Running nodes fuzzed through every method, checked to keep answering
and to keep their metadata replicas equal, are in `tests/e2e/test_live_fuzz.py`; hand-picked
bad input to a live node in `tests/cluster/test_bad_input.py`.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfs.node.cluster.map import ClusterMap
from ringfs.node.errors import AuthenticationError, NodeError, ProtocolError
from ringfs.node.meta.commands import Entry, command_from_wire, query_from_wire
from ringfs.node.raft.core import Raft, message_from_wire
from ringfs.node.register import ballot_from_wire, register_from_wire
from ringfs.node.rpc.protocol import Connection, Role, parse_message

FAST = 300
# The slow tier runs each target in `PARTS` tests of `SLOW // PARTS` examples, each well within
# the per-test timeout.
SLOW = 25_000
PARTS = 10
SECRET = b"fuzz secret of sixteen bytes or more"
IDS = ("n1", "n2", "n3")

# What msgpack can carry, nested: every type a peer can put anywhere.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=24)
    | st.sampled_from(["n1", "n2", "", "mkdir", "lookup", "/", ".."])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4)
    ),
    max_leaves=24,
)
# Arrays shaped like the messages they imitate: a tag, then anything.
tagged = st.builds(
    lambda tag, rest: [tag, *rest], st.integers(-2, 40), st.lists(values, max_size=9)
)
inputs = values | tagged


def _refused_cleanly(decode: Any, obj: object, *errors: type[BaseException]) -> None:
    """`decode(obj)` returns, or raises one of `errors`: any other exception fails the test."""
    with contextlib.suppress(*errors):
        decode(obj)


@settings(max_examples=FAST, deadline=None)
@given(st.lists(st.binary(max_size=64) | inputs.map(lambda v: msgpack.packb(v)), max_size=6))
def test_the_frame_decoder_and_handshake_take_any_bytes(chunks: list[bytes]) -> None:
    server = Connection(Role.SERVER, SECRET, node_id="n1")
    for chunk in chunks:
        try:
            events = server.receive_data(chunk)
        except (ProtocolError, AuthenticationError):
            return  # the connection is closed with a reason: nothing else happens
        assert isinstance(events, list)
        server.data_to_send()


@settings(max_examples=FAST, deadline=None)
@given(st.lists(inputs, max_size=8))
def test_an_authenticated_connection_takes_any_message(objects: list[Any]) -> None:
    client, server = Connection(Role.CLIENT, SECRET), Connection(Role.SERVER, SECRET, node_id="n")
    while not (client.is_open and server.is_open):
        for data in client.data_to_send():
            server.receive_data(data)
        for data in server.data_to_send():
            client.receive_data(data)
    for obj in objects:
        try:
            server.receive_data(msgpack.packb(obj))
        except ProtocolError:
            return
        _refused_cleanly(parse_message, obj, ProtocolError)


@settings(max_examples=FAST, deadline=None)
@given(inputs)
def test_every_method_parameter_decoder_refuses_cleanly(obj: Any) -> None:
    for decode in (
        command_from_wire,
        query_from_wire,
        Entry.from_wire,
        ClusterMap.from_wire,
        ballot_from_wire,
        register_from_wire,
    ):
        _refused_cleanly(decode, obj, NodeError)


# Raft messages: the decoder, then a core stepping what decoded.
messages = st.builds(
    lambda kind, src, dst, rest: [kind, src, dst, *rest],
    st.integers(0, 6),
    st.sampled_from([*IDS, "x"]),
    st.sampled_from([*IDS, "x"]),
    st.lists(
        st.integers(0, 2**62)
        | st.integers(0, 8)
        | st.booleans()
        | st.lists(st.lists(st.integers(0, 5) | st.binary(max_size=8), max_size=4), max_size=3),
        max_size=10,
    ),
)


@settings(max_examples=FAST, deadline=None)
@given(st.lists(messages | inputs, max_size=12), st.integers(0, 2**32))
def test_a_raft_core_steps_any_message_that_decodes(wires: list[Any], seed: int) -> None:
    raft = Raft("n1", IDS, rng=random.Random(seed))
    for _ in range(25):
        raft.tick()  # a pre-candidate with a timer running
    for wire in wires:
        try:
            message = message_from_wire(wire)
        except ValueError:
            continue
        term, commit = raft.term, raft.commit_index
        raft.step(message)
        raft.tick()
        assert raft.term >= term
        assert commit <= raft.commit_index <= raft.last_index


slow = pytest.mark.parametrize(
    "part", [pytest.param(n, marks=pytest.mark.slow) for n in range(PARTS)]
)
slow_settings = settings(max_examples=SLOW // PARTS, deadline=None)


@slow
@slow_settings
@given(st.lists(st.binary(max_size=64) | inputs.map(lambda v: msgpack.packb(v)), max_size=6))
def test_the_frame_decoder_and_handshake_take_any_bytes_slow(
    part: int, chunks: list[bytes]
) -> None:
    test_the_frame_decoder_and_handshake_take_any_bytes.hypothesis.inner_test(chunks)


@slow
@slow_settings
@given(st.lists(inputs, max_size=8))
def test_an_authenticated_connection_takes_any_message_slow(part: int, objects: list[Any]) -> None:
    test_an_authenticated_connection_takes_any_message.hypothesis.inner_test(objects)


@slow
@slow_settings
@given(inputs)
def test_every_method_parameter_decoder_refuses_cleanly_slow(part: int, obj: Any) -> None:
    test_every_method_parameter_decoder_refuses_cleanly.hypothesis.inner_test(obj)


@slow
@slow_settings
@given(st.lists(messages | inputs, max_size=12), st.integers(0, 2**32))
def test_a_raft_core_steps_any_message_that_decodes_slow(
    part: int, wires: list[Any], seed: int
) -> None:
    test_a_raft_core_steps_any_message_that_decodes.hypothesis.inner_test(wires, seed)
