"""The CASPaxos register on a node: its acceptor's durable state, the `paxos.*` methods, and a
proposer that runs `ringfs.node.cluster.paxos` over RPC.

The acceptor's promise, last accepted ballot and value, and the proposer's ballot counter live
in one small file (`REGISTER_FILE`), replaced atomically and fsync'd before any answer that
depends on it goes out. The proposer asks every acceptor at once and goes on as soon as a
majority answered, so one slow or dead member costs nothing.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import trio

from ringfs.node.cluster.map import ClusterMap, MapView
from ringfs.node.cluster.paxos import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    Ballots,
    Change,
    Conflict,
    InDoubt,
    Message,
    Prepare,
    Promise,
    Proposal,
    Reconfigured,
    Register,
    Reject,
)
from ringfs.node.durable import fsync_dir
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.rpc.client import NodePool
from ringfs.node.rpc.protocol import is_natural

log = logging.getLogger(__name__)

#: The file, in the data directory, that holds the acceptor's state and the ballot counter.
REGISTER_FILE = "register"
#: Seconds one attempt waits for a majority before it tries again with a higher ballot.
ATTEMPT_TIMEOUT = 1.0
#: Most seconds between two attempts (a random part of it, so that proposers draw apart).
BACKOFF = 0.2


# -- wire forms ------------------------------------------------------------------------------


def ballot_to_wire(ballot: Ballot) -> list[Any]:
    return [ballot.counter, ballot.proposer]


def ballot_from_wire(obj: object) -> Ballot:
    if not (
        isinstance(obj, list) and len(obj) == 2 and is_natural(obj[0]) and isinstance(obj[1], str)
    ):
        raise NodeError("EINVAL", "a ballot is [counter, proposer]")
    return Ballot(obj[0], obj[1])


def register_to_wire(register: Register) -> list[Any]:
    return [register.serial, register.value, [list(entry) for entry in register.recent]]


def register_from_wire(obj: object) -> Register:
    if not (isinstance(obj, list) and len(obj) == 3 and is_natural(obj[0])):
        raise NodeError("EINVAL", "a register is [serial, value, recent]")
    serial, value, recent = obj
    if not isinstance(recent, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in recent
    ):
        raise NodeError("EINVAL", "recent changes are [[change id, result]...]")
    return Register(serial, value, tuple((e[0], e[1]) for e in recent))


def answer_to_wire(answer: Promise | Accepted | Reject) -> list[Any]:
    if isinstance(answer, Promise):
        accepted, value = ballot_to_wire(answer.accepted), register_to_wire(answer.value)
        return ["promise", accepted, value]
    if isinstance(answer, Accepted):
        return ["accepted"]
    return ["reject", ballot_to_wire(answer.promised)]


def answer_from_wire(obj: object, src: str, dst: str, ballot: Ballot) -> Message:
    """The answer of acceptor `src` to this proposer's message at `ballot`."""
    if isinstance(obj, list) and obj:
        match obj[0], len(obj):
            case "promise", 3:
                accepted, value = ballot_from_wire(obj[1]), register_from_wire(obj[2])
                return Promise(src, dst, ballot, accepted, value)
            case "accepted", 1:
                return Accepted(src, dst, ballot)
            case "reject", 2:
                return Reject(src, dst, ballot, ballot_from_wire(obj[1]))
    raise NodeError("EINVAL", f"malformed register answer from {src}")


def acceptors_of(value: object) -> dict[str, str] | None:
    """The acceptors a register value names, with their addresses: those of the map it holds
    (None when it holds none, as before the cluster is founded)."""
    try:
        return ClusterMap.from_wire(value).acceptors()
    except NodeError:
        return None


def _acceptor_ids(value: object) -> frozenset[str] | None:
    named = acceptors_of(value)
    return None if named is None else frozenset(named)


# -- the acceptor's durable state ------------------------------------------------------------


class RegisterStore:
    """The acceptor state and ballot counter of this node, as saved in `REGISTER_FILE`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / REGISTER_FILE
        self.state = AcceptorState()
        self.counter = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            promised, accepted, value, counter = msgpack.unpackb(self.path.read_bytes(), raw=False)
            self.state = AcceptorState(
                ballot_from_wire(promised), ballot_from_wire(accepted), register_from_wire(value)
            )
            self.counter = int(counter)
        except (ValueError, TypeError, NodeError, msgpack.UnpackException) as exc:
            raise NodeError("EINVAL", f"{self.path}: not a register file: {exc}") from exc

    def save(self, state: AcceptorState, counter: int) -> None:
        """Replace the file with `state` and `counter`; durable when this returns."""
        blob = msgpack.packb(
            [
                ballot_to_wire(state.promised),
                ballot_to_wire(state.accepted),
                register_to_wire(state.value),
                counter,
            ],
            use_bin_type=True,
        )
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{REGISTER_FILE}.")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)
        self.state, self.counter = state, counter


# -- the node's register: acceptor and proposer ----------------------------------------------


class NodeRegister:
    """This node's acceptor (answering `paxos.prepare` and `paxos.accept`) and proposer."""

    def __init__(
        self,
        node_id: str,
        store: RegisterStore,
        pool: NodePool,
        view: MapView,
    ) -> None:
        """A proposal asks the acceptors of the map `view` goes by, and also those the
        register's value names if they differ (see `Proposal`)."""
        self.node_id = node_id
        self.store = store
        self.pool = pool
        self.view = view
        self._acceptor = Acceptor(node_id, store.state)
        self._ballots = Ballots(node_id, store.counter)
        self._saving = trio.Lock()
        self._rng = random.Random()

    # -- acceptor --------------------------------------------------------------------------

    async def answer(self, message: Prepare | Accept) -> Promise | Accepted | Reject:
        """The acceptor's answer, once whatever it changed is saved."""
        async with self._saving:
            answer = self._acceptor.handle(message)
            if self._acceptor.state != self.store.state:
                await self._save()
            return answer

    async def paxos_prepare(self, params: list[Any]) -> list[Any]:
        if len(params) != 1:
            raise NodeError("EINVAL", "paxos.prepare takes [ballot]")
        message = Prepare("", self.node_id, ballot_from_wire(params[0]))
        return answer_to_wire(await self.answer(message))

    async def paxos_accept(self, params: list[Any]) -> list[Any]:
        if len(params) != 2:
            raise NodeError("EINVAL", "paxos.accept takes [ballot, register]")
        ballot, value = ballot_from_wire(params[0]), register_from_wire(params[1])
        return answer_to_wire(await self.answer(Accept("", self.node_id, ballot, value)))

    async def _save(self) -> None:
        state, counter = self._acceptor.state, self._ballots.saved_up_to
        await trio.to_thread.run_sync(self.store.save, state, counter)

    # -- proposer --------------------------------------------------------------------------

    async def read(self, deadline: float) -> Any:
        """The register's value, as a majority holds it (see `propose`)."""
        _, value = await self.propose(lambda value: (value, None), deadline, read=True)
        return value

    async def propose(self, change: Change, deadline: float, read: bool = False) -> tuple[Any, Any]:
        """Apply `change` to the register; return its result and the register's value after
        it. Retries with higher ballots until `deadline` (trio time), then raises Unavailable.
        Raises InDoubt (see `ringfs.node.cluster.paxos`) if a retry cannot tell whether it was
        applied. With `read`, the value is kept and the change only gives the result."""
        change_id = "" if read else os.urandom(8).hex()
        above: Ballot | None = None
        sent: int | None = None
        view = self.view.current.acceptors()
        addresses = dict(view)
        joined: tuple[frozenset[str], ...] = ()  # the sets values named on the way
        while trio.current_time() < deadline:
            async with self._saving:
                ballot = self._ballots.next(above)
                if self._ballots.saved_up_to > self.store.counter:
                    await self._save()  # the counter, before the ballot is used
            proposal = Proposal(
                self.node_id, tuple(view), ballot, change, change_id, sent, _acceptor_ids, joined
            )
            try:
                with trio.move_on_at(min(deadline, trio.current_time() + ATTEMPT_TIMEOUT)):
                    await self._attempt(proposal, addresses)
            except Conflict as conflict:
                above = conflict.seen
            except Reconfigured as moved:
                # Drawing apart as after a conflict: its prepares may have cut another short.
                named = acceptors_of(moved.value) or {}
                log.debug("register: the value names acceptors %s too", sorted(named))
                addresses |= named
                joined += (frozenset(named),)
            sent = proposal.sent
            if proposal.done:
                return proposal.result, proposal.value.value
            await trio.sleep(self._rng.uniform(0, BACKOFF))
        raise Unavailable("the cluster map register (no majority of its acceptors answered)")

    async def _attempt(self, proposal: Proposal, addresses: dict[str, str]) -> None:
        """Run one proposal, its acceptors at `addresses`, until it is done; raises Conflict,
        Reconfigured or InDoubt."""
        failure: list[BaseException] = []
        async with trio.open_nursery() as nursery:

            async def exchange(message: Prepare | Accept) -> None:
                try:
                    reply = await self._send(message, addresses[message.dst])
                    follow = proposal.receive(reply)
                except (Unavailable, NodeError) as exc:
                    log.debug("register: %s did not answer: %s", message.dst, exc)
                    return
                except (Conflict, Reconfigured, InDoubt) as exc:  # this attempt is over
                    failure.append(exc)
                    nursery.cancel_scope.cancel()
                    return
                for message_ in follow:
                    assert isinstance(message_, Accept)
                    nursery.start_soon(exchange, message_)
                if proposal.done:
                    nursery.cancel_scope.cancel()

            for prepare in proposal.start():
                assert isinstance(prepare, Prepare)
                nursery.start_soon(exchange, prepare)
        if failure:
            raise failure[0]

    async def _send(self, message: Prepare | Accept, address: str) -> Message:
        """Deliver one message to its acceptor (this node's own, or over RPC at `address`)."""
        if message.dst == self.node_id:
            return await self.answer(message)
        if isinstance(message, Prepare):
            method, params = "paxos.prepare", [ballot_to_wire(message.ballot)]
        else:
            method = "paxos.accept"
            params = [ballot_to_wire(message.ballot), register_to_wire(message.value)]
        wire = await self.pool.call(address, method, params, time_limit=ATTEMPT_TIMEOUT)
        return answer_from_wire(wire, message.dst, self.node_id, message.ballot)
