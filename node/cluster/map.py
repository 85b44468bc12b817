"""The cluster map: members, replication settings and an epoch that only grows.

Pure standard library. Placement questions (where does a block live, who is in the meta
group) are answered here from the map alone, so every holder of the same epoch agrees.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ringfs.node.cluster.keys import MAX_KEYS, SALT_SIZE, check_key_name
from ringfs.node.cluster.ring import Ring, RingNode, block_point
from ringfs.node.durable import fsync_dir
from ringfs.node.errors import NodeError

log = logging.getLogger(__name__)

#: Node states. "joining" and "active" nodes take placements; a joining node is still filling
#: up (reads look there last) and becomes active after its first complete repair pass.
#: "draining" is still a member (it serves and hands its blocks off) but gets nothing new, and
#: is removed once it holds nothing. "down-out" was down longer than the out-time: its blocks
#: were placed elsewhere; it joins again when it comes back. "removed" is kept only so its id
#: is not reused. Every member but a removed one is an acceptor of the map's register.
STATES = frozenset({"joining", "active", "draining", "down-out", "removed"})
#: The states that take placements.
PLACED = frozenset({"joining", "active"})
#: The states of members that serve what they hold.
HOLDING = PLACED | {"draining"}

#: The file, in a node's data directory, that keeps the map it goes by.
MAP_FILE = "cluster.json"

#: Default replication factor R (see design "Data").
DEFAULT_REPLICAS = 3

#: Size of the Raft group for the metadata (design "Metadata").
META_GROUP_SIZE = 3

#: The ring key whose preference list is the meta group.
META_KEY = b"meta"

_NODE_KEYS = frozenset({"id", "host", "port", "weight", "zone", "state", "ring"})
_MAP_KEYS = frozenset({"epoch", "replicas", "nodes", "cluster", "meta", "founders", "keys"})


@dataclass(frozen=True)
class NodeInfo:
    """One member of the cluster as the map records it."""

    node_id: str
    host: str
    port: int
    weight: float = 1.0
    zone: str = ""
    state: str = "active"
    #: The name its ring points come from: "" for its own id; a node that replaced another
    #: takes that one's, so that only the replaced node's blocks move (to it).
    ring: str = ""

    def __post_init__(self) -> None:
        """Raises ValueError for an empty id or host, a bad port, weight or state."""
        if not self.node_id:
            raise ValueError("node id must not be empty")
        if not self.host:
            raise ValueError(f"node {self.node_id!r}: host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"node {self.node_id!r}: port {self.port} is out of range")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"node {self.node_id!r}: weight must be positive")
        if self.state not in STATES:
            raise ValueError(f"node {self.node_id!r}: unknown state {self.state!r}")

    @property
    def ring_name(self) -> str:
        return self.ring or self.node_id

    @property
    def address(self) -> str:
        """The address to dial: "host:port", with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ClusterMap:
    """A version of the membership; a change makes a new map with a higher epoch.

    `cluster_id` names the cluster once its nodes agreed on a map ("" before): nodes and
    mounts of another cluster are refused at the handshake. `meta` pins the meta group (node
    ids) once agreed, so that a change of weights or members never moves it by the way; empty,
    the ring picks it (`meta_nodes`). A change that takes a member out of the meta group puts
    another in its place, and the Raft group follows (`ringfs.node.meta.membership`).
    `founders` is the meta group the cluster was founded with: the Raft group's configuration
    before its log holds one, which every member starts from (a member added later is then
    no voter until the log says so). `keys` are the client keys in force, each a name and
    the salt its secret is derived with (`ringfs.node.cluster.keys`), in name order."""

    epoch: int
    nodes: tuple[NodeInfo, ...]
    replicas: int = DEFAULT_REPLICAS
    cluster_id: str = ""
    meta: tuple[str, ...] = ()
    founders: tuple[str, ...] = ()
    keys: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        """Raises ValueError for a negative epoch, replicas < 1 or duplicate node ids."""
        if self.epoch < 0:
            raise ValueError(f"epoch must not be negative, not {self.epoch}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {self.replicas}")
        ids = [node.node_id for node in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate node ids in {ids}")
        if self.meta and not self.founders:
            # Pinned before meta groups changed: it is the one the cluster was founded with.
            object.__setattr__(self, "founders", self.meta)
        for group in (self.meta, self.founders):
            if len(set(group)) != len(group) or not set(group) <= set(ids):
                raise ValueError(f"the meta group {list(group)} must be distinct members")
        names = [node.ring_name for node in self.nodes if node.state in PLACED]
        if len(set(names)) != len(names):
            raise ValueError(f"two placed nodes take the same ring points: {sorted(names)}")
        key_names = [name for name, _ in self.keys]
        if key_names != sorted(set(key_names)) or len(key_names) > MAX_KEYS:
            raise ValueError(f"keys must be at most {MAX_KEYS}, distinct, in name order")
        for name, salt in self.keys:
            check_key_name(name)
            if len(salt) != SALT_SIZE:
                raise ValueError(f"key {name}: a salt is {SALT_SIZE} bytes")

    @cached_property
    def _ring(self) -> Ring:
        # Draining nodes keep serving what they hold but take no new placements.
        return Ring(
            RingNode(node.node_id, node.weight, node.zone, node.ring)
            for node in self.nodes
            if node.state in PLACED
        )

    @cached_property
    def _by_id(self) -> dict[str, NodeInfo]:
        return {node.node_id: node for node in self.nodes}

    def ring(self) -> Ring:
        """The ring over the placed nodes (built once per map)."""
        return self._ring

    def node(self, node_id: str) -> NodeInfo:
        """The member with this id; raises KeyError if the map has none."""
        return self._by_id[node_id]

    def address_of(self, node_id: str) -> str | None:
        """The address of the member `node_id`; None if the map has no such member (or it
        was removed)."""
        node = self._by_id.get(node_id)
        return None if node is None or node.state == "removed" else node.address

    def members(self) -> list[NodeInfo]:
        """The nodes not removed."""
        return [node for node in self.nodes if node.state != "removed"]

    def acceptors(self) -> dict[str, str]:
        """The register's acceptors (every member not removed), by id, with their addresses."""
        return {node.node_id: node.address for node in self.members()}

    def replica_count(self) -> int:
        """R: the configured replicas, fewer when fewer nodes are placed."""
        return min(self.replicas, len(self._ring))

    def write_quorum(self) -> int:
        """W: a majority of R replicas must have a block on disk before a write succeeds."""
        return self.replica_count() // 2 + 1

    def placement(self, block_id: bytes) -> list[NodeInfo]:
        """The R nodes that should hold the block, in preference order."""
        return self._infos(self._ring.preference_at(block_point(block_id), self.replica_count()))

    def arcs(self, node_id: str) -> list[tuple[int, int]]:
        """The ring positions of the blocks `node_id` should hold (see `Ring.arcs`)."""
        return self._ring.arcs(node_id, self.replica_count())

    def fallbacks(self, block_id: bytes) -> list[NodeInfo]:
        """The other placed nodes in ring order after the placement: where hinted copies go and
        where reads look next."""
        order = self._ring.preference_at(block_point(block_id), len(self._ring))
        return self._infos(order[self.replica_count() :])

    def draining(self) -> list[NodeInfo]:
        """The nodes being drained: they take no placement, but may still hold a block's
        only copies until repair moved them, so reads and repair look there last."""
        return [node for node in self.nodes if node.state == "draining"]

    def holders(self) -> list[NodeInfo]:
        """The members that may hold blocks and are expected to answer: all but those marked
        out or removed."""
        return [node for node in self.nodes if node.state in HOLDING]

    def meta_nodes(self) -> list[NodeInfo]:
        """The meta group: as pinned, or the first min(3, n) nodes the ring picks for the key
        b"meta"."""
        return list(self._meta_nodes)

    def meta_ids(self) -> tuple[str, ...]:
        """The ids of the meta group (`meta_nodes`)."""
        return tuple(node.node_id for node in self._meta_nodes)

    @cached_property
    def _meta_nodes(self) -> tuple[NodeInfo, ...]:
        # Asked for on every metadata call: worked out once per map.
        ids = self.meta or self._ring.preference(META_KEY, META_GROUP_SIZE)
        return tuple(self._infos(list(ids)))

    def readdressed(self, given: tuple[NodeInfo, ...]) -> ClusterMap:
        """This map with the addresses `given` has for its members (matched by id), in the
        same epoch."""
        moved = {node.node_id: node for node in given}
        nodes = tuple(
            replace(node, host=there.host, port=there.port)
            if (there := moved.get(node.node_id)) is not None
            else node
            for node in self.nodes
        )
        return replace(self, nodes=nodes)

    def pinned(self) -> ClusterMap:
        """This map with its meta group pinned as the ring picks it now."""
        return replace(self, meta=self.meta_ids())

    def meta_founders(self) -> tuple[str, ...]:
        """The meta group the cluster was founded with (see the class); the ring's pick
        before one was pinned."""
        return self.founders or self.meta_ids()

    def successor(self, meta: tuple[str, ...]) -> str | None:
        """The placed node the ring picks next for the meta group beyond `meta` (None if
        every placed node is in it): who takes a leaving member's place."""
        for node_id in self._ring.preference(META_KEY, len(self._ring)):
            if node_id not in meta:
                return node_id
        return None

    def key_salt(self, name: str) -> bytes | None:
        """The salt of the client key `name`, None if it is not in force."""
        return self._keys.get(name)

    @cached_property
    def _keys(self) -> dict[str, bytes]:
        # Looked up at every client's handshake: built once per map.
        return dict(self.keys)

    def _infos(self, node_ids: list[str]) -> list[NodeInfo]:
        return [self._by_id[node_id] for node_id in node_ids]

    def to_wire(self) -> dict[str, Any]:
        """A plain dict (str keys, ints, floats, strs, lists) for msgpack and JSON."""
        return {
            "cluster": self.cluster_id,
            "meta": list(self.meta),
            "founders": list(self.founders),
            "keys": [[name, salt.hex()] for name, salt in self.keys],
            "epoch": self.epoch,
            "replicas": self.replicas,
            "nodes": [
                {
                    "id": node.node_id,
                    "host": node.host,
                    "port": node.port,
                    "weight": node.weight,
                    "zone": node.zone,
                    "state": node.state,
                    "ring": node.ring,
                }
                for node in self.nodes
            ],
        }

    @classmethod
    def from_wire(cls, obj: object) -> ClusterMap:
        """Rebuild a map from `to_wire` output; raises NodeError("EINVAL") if it is malformed
        in any way (missing or unknown keys, wrong types, invalid values)."""
        try:
            if isinstance(obj, dict):  # saved before cluster ids, meta groups and keys
                obj = {"cluster": "", "meta": [], "founders": [], "keys": [], **obj}
            fields = _exact_keys(obj, _MAP_KEYS, "cluster map")
            raw_nodes = fields["nodes"]
            if not isinstance(raw_nodes, list):
                raise ValueError("nodes must be a list")
            return cls(
                epoch=_int(fields["epoch"], "epoch"),
                nodes=tuple(_node_from_wire(raw) for raw in raw_nodes),
                replicas=_int(fields["replicas"], "replicas"),
                cluster_id=_str(fields["cluster"], "cluster id"),
                meta=_meta(fields["meta"]),
                founders=_meta(fields["founders"]),
                keys=_keys(fields["keys"]),
            )
        except ValueError as exc:
            raise NodeError("EINVAL", f"malformed cluster map: {exc}") from exc

    def save(self, path: Path) -> None:
        """Write the map as JSON atomically: a crash leaves the old file or the new one.

        Raises OSError if the file cannot be written.
        """
        text = json.dumps(self.to_wire(), indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        log.debug("saved cluster map epoch %d to %s", self.epoch, path)

    @classmethod
    def load(cls, path: Path) -> ClusterMap:
        """Read a map written by `save`.

        Raises OSError if the file cannot be read, NodeError("EINVAL") if it is not a map.
        """
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NodeError("EINVAL", f"{path}: not JSON: {exc}") from exc
        return cls.from_wire(obj)


class MapView:
    """The map a node goes by now. It is replaced whole when the cluster agrees on a newer
    one, so every part of the node reads `current` each time it places something, instead
    of keeping a map of its own."""

    def __init__(self, cmap: ClusterMap) -> None:
        self.current = cmap


def parse_members(spec: str) -> tuple[NodeInfo, ...]:
    """Parse "n1=127.0.0.1:7001,n2=[::1]:7002" into active nodes of weight 1.

    Raises ValueError naming the offending entry: empty spec or entry, missing '=', missing
    or bad port, duplicate id.
    """
    nodes: list[NodeInfo] = []
    seen: set[str] = set()
    for entry in spec.split(","):
        entry = entry.strip()
        node_id, sep, address = entry.partition("=")
        node_id = node_id.strip()
        if not sep or not node_id:
            raise ValueError(f"member {entry!r}: expected ID=HOST:PORT")
        host, port = _parse_address(entry, address.strip())
        if node_id in seen:
            raise ValueError(f"member {entry!r}: duplicate node id {node_id!r}")
        seen.add(node_id)
        nodes.append(NodeInfo(node_id, host, port))
    return tuple(nodes)


def _parse_address(entry: str, address: str) -> tuple[str, int]:
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise ValueError(f"member {entry!r}: expected HOST:PORT after '='")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"member {entry!r}: bad port {port_text!r}")
    return host, int(port_text)


def _exact_keys(obj: object, keys: frozenset[str], what: str) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a map, not {type(obj).__name__}")
    if set(obj) != keys:
        raise ValueError(f"{what} keys {sorted(map(str, obj))} != {sorted(keys)}")
    return obj


def _int(value: object, what: str) -> int:
    # bool is an int subclass; a map with "epoch": true is malformed, not epoch 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an integer")
    return value


def _meta(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(node_id, str) for node_id in value):
        raise ValueError("meta must be a list of node ids")
    return tuple(value)


def _keys(value: object) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise ValueError(f"keys must be a list of at most {MAX_KEYS}")
    if not all(isinstance(p, list) and len(p) == 2 and _texts(p) for p in value):
        raise ValueError("a key is a [name, salt in hex] pair")
    return tuple((name, bytes.fromhex(salt)) for name, salt in value)


def _texts(values: list[object]) -> bool:
    return all(isinstance(value, str) for value in values)


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _node_from_wire(raw: object) -> NodeInfo:
    fields = _exact_keys(raw, _NODE_KEYS, "node")
    weight = fields["weight"]
    if not isinstance(weight, int | float) or isinstance(weight, bool):
        raise ValueError("node weight must be a number")
    return NodeInfo(
        node_id=_str(fields["id"], "node id"),
        host=_str(fields["host"], "node host"),
        port=_int(fields["port"], "node port"),
        weight=float(weight),
        zone=_str(fields["zone"], "node zone"),
        state=_str(fields["state"], "node state"),
        ring=_str(fields["ring"], "node ring name"),
    )
