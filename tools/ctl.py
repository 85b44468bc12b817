"""`ringfs status` and `ringfs repair`: what the cluster holds, and waiting until it is whole.

`status` shows the cluster map, each node's reachability, blocks, bytes, capacity, the blocks
it served to reads, and repair progress, the garbage backlog and the meta group. `repair` has
every node start a repair pass and, with `--wait`, waits until each has finished one with
nothing missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, TextIO

import trio

from ringfs.fs.cluster import Cluster, connected
from ringfs.node.cluster.map import ClusterMap
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.meta.commands import FsInfo, FsStats
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.args import cluster_access
from ringfs.tools.health import Answers, missing_copies, problems

#: Seconds between two looks at the nodes' repair passes while waiting for them.
WHOLE_POLL = 0.25


def status(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    gathered = trio.run(_gather, seeds, client)
    print(_as_json(*gathered) if args.json else _as_text(*gathered))
    return 0


Gathered = tuple[ClusterMap, Answers, Answers, "FsStats | None"]


async def _gather(seeds: tuple[str, ...], client: ClientConfig) -> Gathered:
    """The map, every node's `node.stats`, the meta group's `meta.status` and the
    filesystem's counters (None where nothing answered)."""
    async with connected(seeds, client) as cluster:
        stats = await cluster.node_stats()
        members = await cluster.meta_status()
        try:
            fs: FsStats | None = await cluster.meta_query(FsInfo())
        except (NodeError, Unavailable):
            fs = None
    return cluster.map, stats, members, fs


def _as_json(cmap: ClusterMap, stats: Answers, members: Answers, fs: FsStats | None) -> str:
    """Everything gathered, as one JSON document (`docs/operations.md` describes it)."""
    document = {
        "cluster": cmap.cluster_id,
        "epoch": cmap.epoch,
        "replicas": cmap.replica_count(),
        "write_quorum": cmap.write_quorum(),
        "problems": problems(cmap, stats, members),
        "nodes": [
            {"id": info.node_id, "address": info.address, "state": info.state, "stats": s}
            for info, s in stats
        ],
        "meta": [{"id": info.node_id, "status": s} for info, s in members],
        "fs": None if fs is None else dataclasses.asdict(fs),
    }
    return json.dumps(document, indent=2, default=str)


def _as_text(cmap: ClusterMap, stats: Answers, members: Answers, fs: FsStats | None) -> str:
    roles = {info.node_id: f"meta {s['role']}" if s else "meta" for info, s in members}
    found = problems(cmap, stats, members)
    lines = [
        f"cluster {cmap.cluster_id or '(not agreed yet)'}, map epoch {cmap.epoch}, "
        f"{len(cmap.members())} nodes, "
        f"replicas {cmap.replica_count()} (write quorum {cmap.write_quorum()})",
        *([f"problem: {text}" for text in found] or ["health: no problem found"]),
        f"{'NODE':<10} {'ADDRESS':<22} {'STATE':<12} {'BLOCKS':>8} {'DATA':>10} "
        f"{'CAPACITY':>10} {'FREE':>10} {'READS':>8}  ROLE",
    ]
    for info, node_stats in stats:
        lines.append(
            _node_line(
                info.node_id, info.address, info.state, node_stats, roles.get(info.node_id, "")
            )
        )
    answering = [s for _, s in stats if s is not None]
    lines.append(_total_line(answering))
    moving = _moving_line(answering, time.time())
    repair = [_repair_line(info.node_id, s["repair"]) for info, s in stats if s is not None]
    repair = [moving, *repair] if moving else repair
    scrub = [_scrub_line(info.node_id, s["scrub"]) for info, s in stats if s is not None]
    return "\n".join(
        [*lines, "", *repair, *scrub, _garbage_line(stats, fs), "", *_meta_lines(members)]
    )


def _total_line(stats: list[dict[str, Any]]) -> str:
    """The cluster's copies, and how far they are from where the ring wants them: copies
    missing on their nodes and copies held for other nodes, as the nodes' last passes found."""
    blocks = sum(s["blocks"] for s in stats)
    counted = "" if all(s["counted"] for s in stats) else "~"
    passes = [s["repair"]["current"] or s["repair"]["last"] for s in stats]
    missing = missing_copies(stats)
    held = sum(p["misplaced"] - p["released"] for p in passes if p is not None)
    return (
        f"{'total':<10} {'':<22} {'':<12} {counted + str(blocks):>8} "
        f"{_human(sum(s['bytes'] for s in stats)):>10}  "
        f"{missing} copies missing on their nodes, {held} held for other nodes"
    )


def _moving_line(stats: list[dict[str, Any]], now: float) -> str | None:
    """How far the copies are from where the map wants them, in bytes, and when the repair
    passes will have moved them at the rate they go now (after a change of the map, or while
    a node refills). None when nothing is missing."""
    missing = missing_copies(stats)
    rate = 0.0
    for node in stats:
        if (current := node["repair"]["current"]) is not None:
            rate += current["repaired_bytes"] / max(now - current["started"], 1e-3)
    if not missing:
        return None
    blocks = sum(s["blocks"] for s in stats)
    size = missing * sum(s["bytes"] for s in stats) // max(blocks, 1)
    line = f"moving: {missing} copies (about {_human(size)}) to the nodes the map places them on"
    if rate < 1:
        return line + ", at the nodes' next repair passes"
    return line + f", at {_human(round(rate))}/s: about {_human_seconds(size / rate)} left"


def _repair_line(node_id: str, repair: dict[str, Any]) -> str:
    """One node's repair: the pass under way or the last one, and what it stored again."""
    line = f"repair {node_id}: "
    current, last = repair["current"], repair["last"]
    if current is not None:
        rate = current["repaired_bytes"] / max(time.time() - current["started"], 1e-3)
        line += (
            f"pass {current['number']} at {100 * (repair['progress'] or 0):.0f}%, "
            f"{current['checked']} blocks checked, {current['missing']} missing, "
            f"{current['repaired']} stored again at {_human(round(rate))}/s "
            f"(at most {_human(round(repair['rate']))}/s)"
        )
    elif last is not None:
        ago = _human_seconds(time.time() - last["finished"])
        missing = last["missing"] - last["repaired"]
        line += f"last pass {ago} ago, " + ("" if last["complete"] else "cut short, ")
        line += f"{last['checked']} blocks checked, " + (
            f"{missing} still missing" if missing else "none missing"
        )
        if held := last["misplaced"] - last["released"]:
            line += f", {held} copies held for other nodes"
        if last["unreferenced"] or last["abandoned"]:
            line += (
                f", {last['unreferenced']} no file references "
                f"({last['abandoned']} given to the collector)"
            )
    else:
        line += "no pass yet"
    if repair["repaired"]:
        line += f"; {repair['repaired']} copies stored again ({_human(repair['repaired_bytes'])})"
    if repair["handed"]:
        line += f"; {repair['handed']} copies handed on ({_human(repair['handed_bytes'])})"
    return line


def _scrub_line(node_id: str, scrub: dict[str, Any]) -> str:
    """One node's scrub: the pass under way, and when the last full one finished."""
    line = f"scrub {node_id}: "
    if scrub["started"] is not None:
        rate = scrub["verified_bytes"] / max(time.time() - scrub["started"], 1e-3)
        line += (
            f"pass at {100 * scrub['progress']:.0f}%, {scrub['verified']} blocks verified "
            f"({_human(scrub['verified_bytes'])}, {_human(round(rate))}/s), "
            f"{scrub['corrupt']} corrupt"
        )
    else:
        line += "no pass under way"
    if scrub["last_finished"] is not None:
        ago = _human_seconds(time.time() - scrub["last_finished"])
        line += (
            f"; last full pass {ago} ago: {scrub['last_verified']} verified, "
            f"{scrub['last_corrupt']} corrupt"
        )
    return line


def repair(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    return trio.run(_repair, seeds, client, args.wait, args.timeout)


async def _repair(
    seeds: tuple[str, ...], client: ClientConfig, wait: bool, limit: float | None
) -> int:
    async with connected(seeds, client) as cluster:
        started = await cluster.repair_start()
        targets = {info.node_id: s["wanted"] for info, s in started if s is not None}
        for info, answer in started:
            print(
                f"{info.node_id}: repair pass {answer['wanted']} asked"
                if answer is not None
                else f"{info.node_id}: does not answer",
                file=sys.stderr,
            )
        if not wait:
            return 0 if len(targets) == len(started) else 1
        with trio.move_on_after(limit if limit is not None else float("inf")):
            await wait_whole(cluster, targets, sys.stderr)
            return 0
        print("repair: timed out", file=sys.stderr)
        return 1


async def wait_whole(cluster: Cluster, targets: dict[str, int], out: TextIO) -> None:
    """Until every node finished a pass that started after it was asked, with nothing missing.

    A node that restarts in between starts counting its passes again: it is asked again.
    """
    bar = ProgressBar(out)
    while True:
        answers = await cluster.repair_status()
        done = 0.0
        for info, stats in answers:
            target = targets.get(info.node_id)
            if stats is None:
                continue
            if target is None or stats["passes"] + 1 < target:  # new to us, or restarted
                try:
                    asked = await cluster.pool.call(info.address, "repair.start", [])
                except (Unavailable, NodeError):
                    continue  # gone again: asked once it answers
                targets[info.node_id] = target = asked["wanted"]
            done += _node_done(stats, target)
        up = [(info, s) for info, s in answers if s is not None and info.node_id in targets]
        whole = sum(1 for info, s in up if s["clean"] >= targets[info.node_id])
        copied = _human(sum(s["repaired_bytes"] for _, s in up))
        bar.show(done / len(answers), f"{whole}/{len(answers)} nodes whole, {copied} copied")
        if whole == len(answers):
            bar.end()
            return
        await trio.sleep(WHOLE_POLL)


def _node_done(stats: dict[str, Any], target: int) -> float:
    """How far a node is towards a clean pass numbered at least `target`, from 0 to 1."""
    if stats["clean"] >= target:
        return 1.0
    current = stats["current"]
    if current is not None and current["number"] >= target:
        return stats["progress"] or 0.0
    return 0.0


class ProgressBar:
    """A bar redrawn in place on a terminal; on anything else, a line when the text changes."""

    WIDTH = 30

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def show(self, fraction: float, text: str) -> None:
        filled = round(self.WIDTH * fraction)
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * fraction:3.0f}% {text}"
        if self.tty:
            self.out.write(f"\r{line}\x1b[K")
            self.out.flush()
        elif text != self.last:
            print(line, file=self.out)
        self.last = text

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _node_line(
    node_id: str, address: str, state: str, stats: dict[str, Any] | None, role: str
) -> str:
    if stats is None:  # a node marked out is expected not to answer: say so instead
        return f"{node_id:<10} {address:<22} {state if state == 'down-out' else 'unreachable':<12}"
    return (
        f"{node_id:<10} {address:<22} {state:<12} "
        f"{('' if stats['counted'] else '~') + str(stats['blocks']):>8} "
        f"{_human(stats['bytes']):>10} {_human(stats['capacity']):>10} "
        f"{_human(stats['free']):>10} {stats['reads']:>8}  {role}"
    )


def _meta_lines(members: Answers) -> list[str]:
    """The meta group: leader, term, and each member's log position, lag and snapshot."""
    answering = [s for _, s in members if s is not None]
    leader = next((s for s in answering if s["role"] == "leader"), None)
    term = max((s["term"] for s in answering), default=0)
    head = f"meta group: leader {leader['node_id'] if leader else 'none (election)'}, term {term}"
    if leader is not None:
        head += f", commit index {leader['commit_index']}"
    lines = [head, f"{'MEMBER':<10} {'ROLE':<14} {'LOG INDEX':>10} {'APPLIED':>9} "
                   f"{'LAG':>6} {'SNAPSHOT':>9}"]  # fmt: skip
    for info, member in members:
        if member is None:
            lines.append(f"{info.node_id:<10} {'unreachable':<14}")
            continue
        lag = leader["last_index"] - member["last_index"] if leader is not None else 0
        lines.append(
            f"{info.node_id:<10} {_meta_role(info.node_id, member, leader):<14} "
            f"{member['last_index']:>10} "
            f"{member['applied_index']:>9} {max(lag, 0):>6} {member['snapshot_index']:>9}"
        )
    return lines


def _meta_role(node_id: str, member: dict[str, Any], leader: dict[str, Any] | None) -> str:
    """A member's role, or, for a node the leader's configuration does not count (yet or any
    more), what it is to the group."""
    if leader is None or node_id in leader["voters"]:
        return str(member["role"])
    return "learner" if node_id in leader["learners"] else "not a voter"


def _garbage_line(stats: Answers, fs: FsStats | None) -> str:
    """The garbage collector's backlog, as the metadata counts it (the data of each block, not
    its copies), and its progress, as the leader's collector counts it."""
    active = [(i, s["gc"]) for i, s in stats if s is not None and s["gc"] and s["gc"]["active"]]
    if not active or fs is None:
        return "garbage: no collector running (no meta leader)"
    info, gc = active[0]
    waiting = f"{fs.garbage_blocks} blocks ({_human(fs.garbage_bytes)}) waiting"
    line = f"garbage: {waiting}, {gc['collected']} collected (on {info.node_id})"
    if gc["failing"]:
        line += f"; deletes failing on {', '.join(gc['failing'])}"
    return line


def _human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.0f}h"


def _human(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
