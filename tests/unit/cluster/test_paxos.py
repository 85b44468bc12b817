"""The CASPaxos register's decisions, one message at a time (the simulation in
`tests/sim/test_paxos_sim.py` runs them under faults)."""

from __future__ import annotations

from typing import Any

import pytest

from ringfs.node.cluster.paxos import (
    BALLOTS_PER_SAVE,
    RECENT,
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    Ballots,
    Conflict,
    InDoubt,
    Prepare,
    Promise,
    Proposal,
    Reconfigured,
    Register,
    Reject,
)

NODES = ("a", "b", "c")


def incr(value: Any) -> tuple[Any, Any]:
    after = (value or 0) + 1
    return after, after


def test_an_acceptor_promises_only_upward_and_accepts_what_it_did_not_refuse() -> None:
    acceptor = Acceptor("a", AcceptorState())
    one, two = Ballot(1, "p"), Ballot(2, "q")
    assert acceptor.handle(Prepare("p", "a", one)) == Promise(
        "a", "p", one, Ballot.zero(), Register()
    )
    assert acceptor.handle(Prepare("q", "a", two)).__class__ is Promise
    assert acceptor.handle(Prepare("p", "a", one)) == Reject("a", "p", one, two)
    assert acceptor.handle(Prepare("q", "a", two)) == Reject("a", "q", two, two)  # not twice
    value = Register(1, "x", (("c1", "r"),))
    assert acceptor.handle(Accept("p", "a", one, value)) == Reject("a", "p", one, two)
    assert acceptor.handle(Accept("q", "a", two, value)) == Accepted("a", "q", two)
    assert acceptor.state == AcceptorState(two, two, value)
    # An accept above the promise is taken too: its prepare went to other acceptors.
    three = Ballot(3, "p")
    assert acceptor.handle(Accept("p", "a", three, value)) == Accepted("a", "p", three)
    assert acceptor.state.promised == three


def test_ballots_rise_above_what_was_seen_and_saved() -> None:
    ballots = Ballots("p", saved=7)
    assert ballots.next() == Ballot(8, "p")
    assert ballots.saved_up_to == 8 + BALLOTS_PER_SAVE  # saved once for the next hundred
    assert ballots.next() == Ballot(9, "p")
    assert ballots.saved_up_to == 8 + BALLOTS_PER_SAVE
    assert ballots.next(Ballot(200, "q")) == Ballot(201, "p")
    assert ballots.saved_up_to == 201 + BALLOTS_PER_SAVE
    assert Ballots("p", saved=ballots.saved_up_to).next() > Ballot(201, "p")  # after a restart
    assert Ballot(21, "p") < Ballot(21, "q") < Ballot(22, "a")


def promise(src: str, ballot: Ballot, accepted: Ballot, value: Register) -> Promise:
    return Promise(src, "p", ballot, accepted, value)


def test_a_proposal_builds_on_the_highest_accepted_value_of_a_majority() -> None:
    ballot = Ballot(5, "p")
    proposal = Proposal("p", NODES, ballot, incr, "c1")
    assert proposal.start() == [Prepare("p", n, ballot) for n in NODES]
    older, newer = Register(3, 3, ()), Register(4, 4, ())
    assert proposal.receive(promise("a", ballot, Ballot(3, "x"), newer)) == []
    accepts = proposal.receive(promise("b", ballot, Ballot(2, "y"), older))
    expected = Register(5, 5, (("c1", 5),))
    assert accepts == [Accept("p", n, ballot, expected) for n in NODES]
    assert proposal.receive(promise("c", ballot, Ballot.zero(), Register())) == []  # late
    assert proposal.receive(Accepted("a", "p", ballot)) == []
    assert proposal.receive(Accepted("a", "p", ballot)) == []  # a duplicate counts once
    assert not proposal.done
    proposal.receive(Accepted("c", "p", ballot))
    assert (proposal.done, proposal.result, proposal.value) == (True, 5, expected)


def test_answers_to_other_ballots_or_from_strangers_are_ignored() -> None:
    ballot = Ballot(5, "p")
    proposal = Proposal("p", NODES, ballot, incr, "c1")
    assert proposal.receive(Reject("a", "p", Ballot(4, "p"), Ballot(9, "q"))) == []
    assert proposal.receive(promise("z", ballot, Ballot.zero(), Register())) == []
    assert proposal.receive(promise("a", ballot, Ballot.zero(), Register())) == []
    with pytest.raises(Conflict) as conflict:
        proposal.receive(Reject("b", "p", ballot, Ballot(9, "q")))
    assert conflict.value.seen == Ballot(9, "q")


def test_a_change_already_applied_is_not_applied_again() -> None:
    ballot = Ballot(9, "p")
    proposal = Proposal("p", NODES, ballot, incr, "c1", sent_since=4)
    # Another proposer took up the value of an earlier attempt and built on it.
    current = Register(5, 10, (("c1", 4), ("c2", 10)))
    proposal.receive(promise("a", ballot, Ballot(8, "q"), current))
    accepts = proposal.receive(promise("b", ballot, Ballot(8, "q"), current))
    assert [a.value for a in accepts] == [current] * 3
    assert proposal.result == 4


def test_a_change_the_register_no_longer_remembers_is_in_doubt() -> None:
    recent = tuple((f"other{i}", i) for i in range(RECENT))
    current = Register(100, 7, recent)
    assert current.remembers_since(100 - RECENT + 1)
    assert not current.remembers_since(100 - RECENT)
    ballot = Ballot(9, "p")
    fresh = Proposal("p", NODES, ballot, incr, "c1", sent_since=100 - RECENT + 1)
    fresh.receive(promise("a", ballot, Ballot(8, "q"), current))
    fresh.receive(promise("b", ballot, Ballot(8, "q"), current))
    assert (fresh.value.serial, fresh.result) == (101, 8)  # not applied before: apply now
    assert len(fresh.value.recent) == RECENT  # the oldest is forgotten
    doubtful = Proposal("p", NODES, ballot, incr, "c1", sent_since=100 - RECENT)
    doubtful.receive(promise("a", ballot, Ballot(8, "q"), current))
    with pytest.raises(InDoubt):
        doubtful.receive(promise("b", ballot, Ballot(8, "q"), current))


def test_the_next_attempt_knows_what_earlier_ones_sent() -> None:
    ballot = Ballot(1, "p")
    first = Proposal("p", NODES, ballot, incr, "c1")
    assert first.sent is None  # sent no value
    first.receive(promise("a", ballot, Ballot.zero(), Register(2, 2, ())))
    first.receive(promise("b", ballot, Ballot.zero(), Register(2, 2, ())))
    assert first.sent == 3  # it would be change 3
    later = Proposal("p", NODES, Ballot(2, "p"), incr, "c1", sent_since=first.sent)
    assert later.sent == 3


def test_a_read_keeps_the_value_and_records_nothing() -> None:
    ballot = Ballot(3, "p")
    current = Register(7, "map", (("c1", 1),))
    read = Proposal("p", NODES, ballot, lambda value: (value, f"saw {value}"), "")
    read.receive(promise("a", ballot, Ballot(2, "q"), current))
    accepts = read.receive(promise("b", ballot, Ballot(1, "q"), Register()))
    assert [a.value for a in accepts] == [current] * 3  # accepted again as it is
    assert read.result == "saw map"


def members_of(value: Any) -> frozenset[str] | None:
    return None if value is None else frozenset(value[0])


def test_a_proposer_with_an_older_set_of_acceptors_asks_the_values_set_too() -> None:
    ballot = Ballot(5, "p")
    proposal = Proposal("p", NODES, ballot, incr, "c1", None, members_of)
    grown = Register(2, (("a", "b", "c", "d"), 7), ())
    proposal.receive(promise("a", ballot, Ballot(1, "x"), Register(1, (NODES, 6), ())))
    with pytest.raises(Reconfigured) as moved:
        proposal.receive(promise("b", ballot, Ballot(2, "y"), grown))
    assert moved.value.value == grown.value
    assert not proposal.accepting  # nothing was sent that another proposer must finish

    def bump(value: Any) -> tuple[Any, Any]:
        members, x = value
        return (members, x + 1), x + 1

    four = frozenset("abcd")
    again = Proposal("p", NODES, Ballot(6, "p"), bump, "c1", None, members_of, (four,))
    assert [prepare.dst for prepare in again.start()] == ["a", "b", "c", "d"]
    assert again.receive(promise("d", again.ballot, Ballot(2, "y"), grown)) == []
    # a and d are a majority of neither set: wait for a majority of each.
    assert again.receive(promise("a", again.ballot, Ballot(2, "y"), grown)) == []
    accepts = again.receive(promise("b", again.ballot, Ballot(2, "y"), grown))
    assert [accept.dst for accept in accepts] == ["a", "b", "c", "d"]
    assert accepts[0].value.value == (("a", "b", "c", "d"), 8)
    for src in "abc":
        again.receive(Accepted(src, "p", again.ballot))
    assert again.done  # a majority of each set accepted


def test_two_sets_whose_newest_values_name_each_other_make_progress_together() -> None:
    """Neither value was chosen: one set's newest names the other, and back. Asking only the
    named set would go back and forth for ever."""
    four, three = ("a", "b", "c", "d"), ("a", "b", "c")
    to_three = Register(6, (three, 1), ())  # accepted by d alone, at ballot 53
    to_four = Register(6, (four, 1), ())  # accepted by b alone, at ballot 50
    older = Register(5, (four, 0), ())
    first = Proposal("p", four, Ballot(60, "p"), incr_x, "c1", None, members_of)
    first.receive(promise("d", first.ballot, Ballot(53, "d"), to_three))
    first.receive(promise("a", first.ballot, Ballot(13, "a"), older))
    with pytest.raises(Reconfigured):
        first.receive(promise("b", first.ballot, Ballot(50, "d"), to_four))
    joint = Proposal(
        "p", four, Ballot(61, "p"), incr_x, "c1", None, members_of, (frozenset(three),)
    )
    for src, accepted, value in [("d", 53, to_three), ("b", 50, to_four), ("a", 13, older)]:
        accepts = joint.receive(promise(src, joint.ballot, Ballot(accepted, src), value))
    assert accepts[0].value.value == (three, 2)  # built on the newest: it names a set asked


def incr_x(value: Any) -> tuple[Any, Any]:
    members, x = value
    return (members, x + 1), x + 1
