"""`ringfs key add`, `revoke` and `list`: the client keys mounts connect with.

A key lets a mount call what a client needs and nothing else (see docs/security.md). Issuing
and revoking are changes of the cluster map, made with the cluster secret; the key's own
secret is derived from it (`ringfs.node.cluster.keys`), so it is written only to the key file
the operator hands to the mount.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import trio

from ringfs.fs.cluster import connected
from ringfs.node.cluster.keys import SALT_SIZE, check_key_name, key_secret
from ringfs.node.cluster.map import ClusterMap
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.args import UserError, cluster_access
from ringfs.tools.local import write_key_file
from ringfs.tools.members import change_map

#: Seconds `add` and `revoke` wait for every node to go by the map they made.
SETTLE_WAIT = 15.0


def main(args: argparse.Namespace) -> int:
    actions = {"add": add, "revoke": revoke, "list": list_keys}
    return actions[args.action](args)


def add(args: argparse.Namespace) -> int:
    name = check_key_name(args.name)
    out: Path = args.out or Path(f"{name}.key")
    if out.exists():
        raise UserError(f"{out} exists: give another --out, or remove it first")
    seeds, client = cluster_access(args)
    salt = os.urandom(SALT_SIZE).hex()
    cmap = trio.run(change_map, seeds, client, "issue-key", [name, salt])
    write_key_file(out, name, key_secret(client.secret, name, bytes.fromhex(salt)))
    print(f"cluster map epoch {cmap.epoch}: key {name} issued, written to {out}")
    behind = trio.run(settle, seeds, client, cmap.epoch)
    if behind:
        print(f"not confirmed by {', '.join(sorted(behind))}: each takes the key once it goes "
              "by the new map")  # fmt: skip
    print(f"mount with: ringfs mount {','.join(seeds)} MOUNTPOINT --key-file {out.absolute()}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    before = trio.run(_map, seeds, client)
    if before.key_salt(args.name) is None:
        raise UserError(f"no key {args.name!r} in force (see `ringfs key list`)")
    cmap = trio.run(change_map, seeds, client, "revoke-key", [args.name])
    print(f"cluster map epoch {cmap.epoch}: key {args.name} revoked")
    behind = trio.run(settle, seeds, client, cmap.epoch)
    if behind:
        print(
            f"not confirmed by {', '.join(sorted(behind))}: each refuses the key once it goes "
            "by the new map"
        )
    else:
        print("every node refuses it now and closed the connections it opened")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    cmap = trio.run(_map, seeds, client)
    for name, _ in cmap.keys:
        print(name)
    return 0


async def issued_key(seeds: tuple[str, ...], client: ClientConfig, name: str) -> ClientConfig:
    """How a mount of the key `name` connects (with the TLS of `client`), the key issued now if
    it is not in force: for `ringfs up`, which holds the cluster secret already."""
    salt = (await _map(seeds, client)).key_salt(name)
    if salt is None:
        salt = os.urandom(SALT_SIZE)
        cmap = await change_map(seeds, client, "issue-key", [name, salt.hex()])
        await settle(seeds, client, cmap.epoch)
    return ClientConfig(
        key_secret(client.secret, name, salt), key=name, ssl_context=client.ssl_context
    )


async def _map(seeds: tuple[str, ...], client: ClientConfig) -> ClusterMap:
    async with connected(seeds, client) as cluster:
        return cluster.map


async def settle(seeds: tuple[str, ...], client: ClientConfig, epoch: int) -> set[str]:
    """Tell every member of map `epoch`, which reads the register if it is behind, and wait
    until each goes by it; the ids of those that did not within `SETTLE_WAIT`."""
    async with connected(seeds, client) as cluster:
        behind = {node.node_id: node.address for node in cluster.map.members()}
        with trio.move_on_after(SETTLE_WAIT):
            while behind:
                for node_id, address in list(behind.items()):
                    try:
                        info = await cluster.pool.call(address, "node.info", [epoch], 2.0)
                    except (Unavailable, NodeError):
                        continue
                    if info["epoch"] >= epoch:
                        del behind[node_id]
                if behind:
                    await trio.sleep(0.2)
        return set(behind)
