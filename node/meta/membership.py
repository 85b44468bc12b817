"""The Raft group follows the map's meta group, one server at a time.

The cluster map names the meta group the cluster wants (`ClusterMap.meta`: a drain, removal or
replacement of a member puts another in its place); the Raft log holds the configuration in
force. While this member leads, `MetaMembership` brings the second to the first:

- a wanted node that is not a voter is first a learner: the leader replicates to it, by
  snapshot if the log was compacted, and only once it has caught up is it added (thesis
  §4.2.1: added empty, it would hold up commits until it caught up, and stop them if another
  member failed meanwhile);
- a voter no longer wanted is removed once every wanted node is in, so that the group never
  counts fewer members than it had; the leader itself goes last, and hands over once its
  removal is committed.

Each change is Raft's single-server change, committed before the next one is proposed. The
decision is `next_step`, a pure function; `MetaMembership` runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import trio

from ringfs.node.raft.core import ConfigChangePending, NotLeader
from ringfs.node.raft.shell import RaftNode

log = logging.getLogger(__name__)

#: Seconds between two looks at the group by its leader.
CHECK_INTERVAL = 0.5

LEARN, ADD, REMOVE = "learn", "add", "remove"


@dataclass(frozen=True)
class Step:
    """One move towards the wanted group: `LEARN` (replicate to `node` until it caught up),
    `ADD` or `REMOVE` (propose the configuration with `node` in or out)."""

    action: str
    node: str


def next_step(
    voters: Collection[str], wanted: Sequence[str], leader: str, caught_up: Callable[[str], bool]
) -> Step | None:
    """The next move from the configuration `voters` towards the group `wanted`, on the leader
    `leader`; None when there is none to make (it is there, or nothing is wanted)."""
    if not wanted:
        return None
    missing = [node for node in wanted if node not in voters]
    if missing:
        node = missing[0]
        return Step(ADD if caught_up(node) else LEARN, node)
    extra = sorted((node for node in voters if node not in wanted), key=lambda n: n == leader)
    return Step(REMOVE, extra[0]) if extra else None


class MetaMembership:
    """Runs `next_step` on a member while it leads (see the module)."""

    def __init__(self, raft: RaftNode, wanted: Callable[[], Sequence[str]]) -> None:
        self.raft = raft
        self.wanted = wanted
        # The commit index at the last look, per learner: one that has reached it since has
        # kept up with the leader over a whole interval.
        self._marks: dict[str, int] = {}

    async def run(self) -> None:
        """Every `CHECK_INTERVAL` seconds until cancelled."""
        while True:
            await trio.sleep(CHECK_INTERVAL)
            self.check()

    def check(self) -> None:
        """One look: make the next move, if this member leads and one is due."""
        core = self.raft.raft
        if core.role != "leader":
            self._marks.clear()
            return
        step = next_step(core.voters, self.wanted(), core.node_id, self._caught_up)
        self._marks = {node: core.commit_index for node in core.learners}
        try:
            if core.learners and (step is None or step.action == REMOVE):
                self.raft.set_learners(())  # an ADD makes its learner a voter
            if step is None:
                return
            if step.action == LEARN:
                if step.node not in core.learners:
                    log.info("meta group: %s catches up before it is added", step.node)
                    self.raft.set_learners((step.node,))
                    self._marks[step.node] = core.commit_index
                return
            voters = set(core.voters)
            voters = voters | {step.node} if step.action == ADD else voters - {step.node}
            index = self.raft.propose_config(tuple(sorted(voters)))
            log.info(
                "meta group: %s %s (entry %d): voters %s",
                "adding" if step.action == ADD else "removing",
                step.node,
                index,
                ", ".join(sorted(voters)),
            )
        except (NotLeader, ConfigChangePending):
            pass  # no longer leading, or the last change is not committed yet: next look

    def _caught_up(self, node: str) -> bool:
        """Whether the learner `node` reached, by now, what was committed at the last look
        (something was: a mark of 0 says nothing about it)."""
        core = self.raft.raft
        mark = self._marks.get(node, 0)
        return mark > 0 and node in core.learners and core.match_index.get(node, 0) >= mark
