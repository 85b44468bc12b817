"""The `ringfs` command: argument parsing, logging setup, and one-line errors.

Each subcommand turns its arguments into a frozen config and runs the async `run(config)` of
the package that does the work. User mistakes (a missing mountpoint, a port in use, a node
that cannot be reached, a wrong secret) end as one line on stderr and exit status 1, never a
traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.blocks.scrub import ScrubConfig
from ringfs.node.blocks.space import Reserve
from ringfs.node.errors import (
    AuthenticationError,
    ConfigError,
    Departed,
    NodeError,
    StorageFailure,
    Unavailable,
)
from ringfs.tools import background
from ringfs.tools.args import UserError, node_count, reserve, seconds, size

log = logging.getLogger("ringfs")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# command -> (module in ringfs.tools, function taking the parsed arguments)
HANDLERS = {
    "up": ("mount", "up"),
    "mount": ("mount", "mount"),
    "node": ("serve", "node"),
    "status": ("ctl", "status"),
    "repair": ("ctl", "repair"),
    "weight": ("members", "weight"),
    "drain": ("members", "drain"),
    "remove": ("members", "remove"),
    "replace": ("members", "replace"),
    "add-node": ("members", "add_node"),
    "bench": ("bench", "main"),
    "tls-init": ("tlsinit", "tls_init"),
    "key": ("keys", "main"),
    "latency": ("latency", "main"),
}


def configure_logging(debug: bool, modules: Sequence[str] = ()) -> None:
    """Leveled lines on stderr; only this module configures logging.

    `--debug` puts all of ringfs at DEBUG; `--debug-modules` only the loggers it names.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    for name in [*modules, *(["ringfs"] if debug else [])]:
        logging.getLogger(name).setLevel(logging.DEBUG)


def _add_mount_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that mounts takes, as mount(8) spells them."""
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        metavar="OPT[,OPT...]",
        help="FUSE mount options, e.g. -o allow_other",
    )
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground until unmounted"
    )
    parser.add_argument(
        "--meta-deadline",
        type=seconds,
        default=20.0,
        metavar="SECONDS",
        help="how long a metadata call looks for a meta-group leader before it fails with EIO "
        "(default 20); a change a leader may have taken waits until its outcome is known",
    )
    parser.add_argument(
        "--commit-within",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long data written to a file that is neither closed nor fsync'd may stay "
        "invisible to other mounts once it is stored (default 30)",
    )
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def _add_cluster_access(parser: argparse.ArgumentParser) -> None:
    """How a command reaches a cluster: --cluster with --secret-file (and TLS files if its
    nodes use TLS), or the `ringfs up` one."""
    parser.add_argument("--cluster", metavar="HOST:PORT[,...]")
    parser.add_argument("--secret-file", type=Path)
    _add_tls(parser)
    parser.add_argument("--data", type=Path, help="data directory of `ringfs up`")


def _add_metrics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (no secret: bind it to an "
        "address only your scraper reaches)",
    )


def _add_tls(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert and --tls-key (all three, or none: plain TCP)."""
    parser.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="the cluster's CA certificate (PEM): use TLS"
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="this node's or client's certificate (PEM)"
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringfs", description="ringfs: a replicated distributed filesystem you mount."
    )
    parser.add_argument("--debug", action="store_true", help="log every request (DEBUG)")
    parser.add_argument(
        "--debug-modules",
        default="",
        metavar="LOGGERS",
        help="comma-separated loggers to put at DEBUG (e.g. ringfs.fs.cluster)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start a local 3-node cluster and mount it (the default)",
        description="Start a local 3-node cluster on loopback and mount it. "
        "Returns once the mount is ready; `fusermount3 -u MOUNTPOINT` unmounts "
        "it and stops the nodes. Run as root, it mounts with -o allow_other, so "
        "other local users can use the mount; the kernel checks their permissions "
        "against each file's owner and mode, as on ext4.",
    )
    up.add_argument("mountpoint", type=Path, help="an existing empty directory")
    up.add_argument(
        "--data",
        type=Path,
        help="data directory (default: $XDG_DATA_HOME/ringfs, or ~/.local/share/ringfs)",
    )
    up.add_argument(
        "--nodes",
        type=node_count,
        metavar="N",
        help="nodes to start, 1 to 16 (default: as many as the data directory holds, or 3 "
        "for a new one)",
    )
    _add_mount_options(up)

    node = sub.add_parser(
        "node", help="run one storage node", description="Run one storage node in the foreground."
    )
    node.add_argument("--name", required=True, help="this node's id in the cluster map")
    node.add_argument("--data", type=Path, required=True, help="data directory")
    node.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on")
    node.add_argument(
        "--cluster",
        metavar="ID=HOST:PORT,...",
        help="all members, to found a cluster (on the first start; later, new addresses)",
    )
    node.add_argument(
        "--join",
        metavar="HOST:PORT[,...]",
        help="instead of --cluster: join the cluster of these nodes (on the first start, with "
        "an empty data directory); the node takes its share of the data, moved to it by repair",
    )
    node.add_argument(
        "--weight",
        type=float,
        default=1.0,
        help="with --join: this node's share of the data relative to the others (default 1)",
    )
    node.add_argument("--zone", default="", help="with --join: this node's failure zone")
    node.add_argument(
        "--out-after",
        type=seconds,
        default=600.0,
        metavar="SECONDS",
        help="seconds a node may not answer before the cluster marks it out and copies its data "
        "to the others (default 600); it joins again when it comes back",
    )
    node.add_argument("--secret-file", type=Path, required=True, help="the cluster secret")
    _add_tls(node)
    _add_metrics(node)
    node.add_argument("--replicas", type=int, default=3, help="copies of each block (default 3)")
    node.add_argument(
        "--chunk-size",
        type=size,
        default=4 << 20,
        help="chunk size when this node creates the filesystem (default 4M)",
    )
    node.add_argument(
        "--snapshot-every",
        type=int,
        metavar="N",
        help="snapshot the metadata and compact the Raft log every N entries (default: "
        "after 1000 entries, once they hold half the size of the last snapshot, at most "
        "64 MiB or 20000 entries)",
    )
    node.add_argument(
        "--reserve",
        type=reserve,
        default=Reserve(),
        metavar="SIZE|PCT%",
        help="free space block writes leave for the metadata, e.g. 1G or 5%% (default: 2%% of "
        "the disk, at least 64M, at most 4G, at most half the disk)",
    )
    node.add_argument(
        "--gc-grace",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds unreferenced blocks are kept before they are deleted (default 60)",
    )
    node.add_argument(
        "--mount-expiry",
        type=seconds,
        default=600.0,
        metavar="SECONDS",
        help="seconds a mount may go unheard from before its session ends and the files it "
        "unlinked while open are removed for good (default 600)",
    )
    node.add_argument(
        "--repair-interval",
        type=seconds,
        default=RepairConfig.interval,
        metavar="SECONDS",
        help="seconds between repair passes, which store again the copies this node lacks "
        f"(default {RepairConfig.interval:.0f}; a pass also runs at start and on `ringfs repair`)",
    )
    node.add_argument(
        "--repair-rate",
        type=size,
        default=RepairConfig.rate,
        metavar="SIZE",
        help="bytes per second repair may copy to this node (default 32M)",
    )
    node.add_argument(
        "--repair-transfers",
        type=int,
        default=RepairConfig.transfers,
        metavar="N",
        help=f"copies repair fetches at once (default {RepairConfig.transfers})",
    )
    node.add_argument(
        "--orphan-age",
        type=seconds,
        default=RepairConfig.orphan_age,
        metavar="SECONDS",
        help="seconds a block no file references is kept before repair abandons it to the "
        f"garbage collector: an upload nobody committed (default {RepairConfig.orphan_age:.0f})",
    )
    node.add_argument(
        "--scrub-period",
        type=seconds,
        default=ScrubConfig.period,
        metavar="SECONDS",
        help="seconds from the start of one scrub pass, which reads and verifies every block "
        "stored here, to the start of the next (default 604800: a week)",
    )
    node.add_argument(
        "--scrub-rate",
        type=size,
        default=ScrubConfig.rate,
        metavar="SIZE",
        help="bytes per second scrub reads (default 16M)",
    )

    mount = sub.add_parser(
        "mount", help="mount an existing cluster", description="Mount a running ringfs cluster."
    )
    mount.add_argument("cluster", metavar="CLUSTER", help="HOST:PORT[,HOST:PORT...] of any nodes")
    mount.add_argument("mountpoint", type=Path)
    credential = mount.add_mutually_exclusive_group(required=True)
    credential.add_argument(
        "--key-file", type=Path, help="a client key (`ringfs key add`): what a mount should use"
    )
    credential.add_argument(
        "--secret-file", type=Path, help="the cluster secret: the mount may act as a node"
    )
    _add_tls(mount)
    _add_metrics(mount)
    _add_mount_options(mount)

    status = sub.add_parser(
        "status",
        help="show what is wrong, nodes, capacity, repair and the meta group",
        description="Show the cluster: what is wrong with it, in words (a node that does not "
        "answer, a meta-group member lagging or stopped, copies missing, a disk nearly "
        "full), then nodes, reachability, blocks and bytes per node, repair, scrub and the "
        "meta group. Cheap: counters only. Without --cluster, shows the local cluster of "
        "`ringfs up`.",
    )
    status.add_argument(
        "--json", action="store_true", help="print it all as one JSON document, for scripts"
    )
    _add_cluster_access(status)

    repair = sub.add_parser(
        "repair",
        help="start a repair pass on every node; --wait until every copy is back",
        description="Have every node start a repair pass now: each stores again the copies "
        "of the blocks it should hold and lacks (fetched from the other nodes). With --wait, "
        "show progress until every node has finished a pass with nothing missing. Without "
        "--cluster, repairs the local cluster of `ringfs up`.",
    )
    repair.add_argument("--wait", action="store_true", help="wait until every copy is back")
    repair.add_argument(
        "--timeout", type=seconds, metavar="SECONDS", help="with --wait: give up after this long"
    )
    _add_cluster_access(repair)

    weight = sub.add_parser(
        "weight",
        help="change a node's weight: its share of the data",
        description="Give NODE a share of the ring, and so of the blocks, in proportion to "
        "WEIGHT (every node starts with 1). The change is agreed by the cluster's nodes and "
        "each of them goes by it within seconds; their repair passes then move the blocks to "
        "where the new placement wants them (see `ringfs status`). Without --cluster, changes "
        "the local cluster of `ringfs up`.",
    )
    weight.add_argument("node", help="the node's id")
    weight.add_argument("weight", type=float, help="a number above 0, at most 100")
    _add_cluster_access(weight)

    drain = sub.add_parser(
        "drain",
        help="move every block off a node, then remove it",
        description="Take NODE out of the placement: it still serves what it holds, the other "
        "nodes' repair passes copy its blocks to where the ring now places them, and its own "
        "deletes each once they hold it; once it holds nothing it leaves the cluster and stops. "
        "With --wait, shows its blocks going down until it has left. A meta-group member "
        "hands its place in the group to the ring's next pick first. A node the remaining ones "
        "would be too few for the replicas cannot be drained. Without --cluster, changes the "
        "local cluster of `ringfs up`.",
    )
    drain.add_argument("node", help="the node's id")
    drain.add_argument("--wait", action="store_true", help="wait until the node has left")
    _add_cluster_access(drain)

    remove = sub.add_parser(
        "remove",
        help="remove a dead node: its data is copied again from the others",
        description="Remove NODE from the cluster for good (a dead node, or one whose disk is "
        "lost): the other nodes' repair passes copy its blocks from the remaining copies to "
        "where the ring now places them. A live node is better drained. A meta-group member "
        "is replaced in the group by the ring's next pick. A node the remaining ones would be "
        "too few for the replicas cannot be removed. Without --cluster, changes the local "
        "cluster of `ringfs up`.",
    )
    remove.add_argument("node", help="the node's id")
    remove.add_argument(
        "--wait", action="store_true", help="wait until every block is back to its copies"
    )
    _add_cluster_access(remove)

    replace = sub.add_parser(
        "replace",
        help="have a newly joined node take an old node's place",
        description="NEW, a node that has joined (started with --join; best just after, while "
        "it holds little of its own), takes OLD's place on the ring, its weight and zone: "
        "exactly OLD's blocks move, and they move to NEW. OLD drains and leaves (or, if it was "
        "marked out, is removed); if it is in the meta group, NEW takes its place there too. "
        "Without --cluster, changes the local cluster of `ringfs up`.",
    )
    replace.add_argument("old", help="the id of the node to replace")
    replace.add_argument("new", help="the id of the joined node that takes its place")
    replace.add_argument(
        "--wait", action="store_true", help="wait until OLD has left and NEW holds its blocks"
    )
    _add_cluster_access(replace)

    add_node = sub.add_parser(
        "add-node",
        help="start one more node in the local cluster of `ringfs up`",
        description="Start one more node (the next name, n4 after n1..n3) in the running "
        "local cluster of `ringfs up`: it joins, takes its share of the data, and stops with "
        "the others at unmount. For a cluster of your own, start `ringfs node --join`.",
    )
    add_node.add_argument(
        "--data", type=Path, help="data directory of `ringfs up` (default: as `ringfs up`)"
    )

    key = sub.add_parser(
        "key",
        help="issue, revoke and list the client keys mounts connect with",
        description="A client key lets a mount read and write files and nothing else: it "
        "cannot speak for a node (Raft, the cluster map, repair, garbage collection). Give "
        "each mount a key of its own (`ringfs mount --key-file`), and keep the cluster "
        "secret on the nodes and the operators' machines. Keys are issued and revoked while "
        "the cluster runs; a revoked key's connections are closed at once. Without "
        "--cluster, manages the local cluster of `ringfs up`.",
    )
    actions = key.add_subparsers(dest="action", required=True, metavar="ACTION")
    key_add = actions.add_parser(
        "add",
        help="issue a key and write it to a file",
        description="Issue the client key NAME and write it to --out (default NAME.key), "
        "readable by its owner only. Hand that file to the mount.",
    )
    key_add.add_argument("name", help="1 to 64 letters, digits, '.', '_', '@' or '-'")
    key_add.add_argument("--out", type=Path, metavar="FILE", help="where to write the key")
    _add_cluster_access(key_add)
    key_revoke = actions.add_parser(
        "revoke",
        help="revoke a key: its mounts are cut off",
        description="Revoke the client key NAME: every node refuses it and closes the "
        "connections opened with it, as soon as it goes by the new cluster map (this waits "
        "until every node does, up to 15 s).",
    )
    key_revoke.add_argument("name")
    _add_cluster_access(key_revoke)
    key_list = actions.add_parser("list", help="list the keys in force")
    _add_cluster_access(key_list)

    tls_init = sub.add_parser(
        "tls-init",
        help="make a CA and TLS certificates for a test cluster (with openssl)",
        description="Write DIR/ca.pem and DIR/ca.key (a new cluster CA, unless DIR has one) "
        "and, for each NAME, DIR/NAME.pem and DIR/NAME.key signed by it. Give each node and "
        "client --tls-ca DIR/ca.pem --tls-cert DIR/NAME.pem --tls-key DIR/NAME.key.",
    )
    tls_init.add_argument("directory", type=Path, metavar="DIR")
    tls_init.add_argument("names", nargs="+", metavar="NAME", help="a node's or client's name")

    bench = sub.add_parser(
        "bench",
        help="measure a mount against a local directory",
        description="Sequential write/read of one large file and creation "
        "of many small files, on the mount and on a local directory.",
    )
    bench.add_argument("mountpoint", type=Path)
    bench.add_argument("--local", type=Path, help="local directory to compare with")
    bench.add_argument("--size", type=size, default=1 << 30, help="large file size (1G)")
    bench.add_argument("--files", type=int, default=2000, help="small files to create (2000)")
    bench.add_argument(
        "--tree",
        action="store_true",
        help="time cp -a, tar x, git clone, git status, rsync -a and rm -rf of a "
        "3,600-file source tree instead",
    )
    bench.add_argument(
        "--appends",
        action="store_true",
        help="time appends of 4 KiB records, each followed by fsync, to an 8 MiB log instead",
    )
    bench.add_argument(
        "--random",
        action="store_true",
        help="time cold reads of 4 KiB at random places in a 256 MiB file instead",
    )
    bench.add_argument(
        "--beside-copies",
        action="store_true",
        help="time creating empty files idle and while two 256 MiB files are copied into the "
        "same directory instead",
    )
    bench.add_argument(
        "--refill",
        action="store_true",
        help="instead: start a cluster of its own mounted on MOUNTPOINT (an empty directory), "
        "write --size of files, wipe one node's blocks, and time its refill and a write and "
        "read beside it",
    )
    bench.add_argument(
        "--spread",
        action="store_true",
        help="instead: start a cluster of its own mounted on MOUNTPOINT (an empty directory), "
        "write --size of files, and show how reading them spreads over the nodes, with one "
        "node throttled and without",
    )
    bench.add_argument(
        "--moves",
        action="store_true",
        help="instead: start a cluster of its own mounted on MOUNTPOINT (an empty directory), "
        "write --size of files, have a 4th node join and drain it again, and show the bytes "
        "each step moved next to what the placement change asks for, with a write and read "
        "beside it",
    )
    bench.add_argument(
        "--parts",
        action="store_true",
        help="instead: time the parts of a metadata round alone, with scratch files in "
        "MOUNTPOINT (any directory): applying the log entries of --files small files to a "
        "fresh database, the Raft core's steps, and calls to a one-node group in this process",
    )
    bench.add_argument(
        "--repair-rate",
        type=size,
        default=RepairConfig.rate,
        metavar="SIZE",
        help="with --refill or --moves: the nodes' --repair-rate (default 32M)",
    )
    bench.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="with --tree, --appends, --random or --beside-copies: another directory to run "
        "them in, e.g. a GlusterFS mount (repeatable)",
    )

    latency = sub.add_parser(
        "latency",
        help="time one metadata operation layer by layer",
        description="Time single operations through a mount (lookup, create + write + "
        "close, rename, unlink) and the same calls made straight to the cluster, so the "
        "differences show what each layer costs. Without --cluster, uses the local "
        "cluster of `ringfs up`.",
    )
    latency.add_argument("mountpoint", type=Path)
    _add_cluster_access(latency)
    latency.add_argument("--rounds", type=int, default=500, help="times each operation (500)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.debug, [m for m in args.debug_modules.split(",") if m])
    ready_fd = getattr(args, "ready_fd", None)
    try:
        try:
            module_name, function = HANDLERS[args.command]
            # Imported on demand: `ringfs node` must not load the FUSE client (pyfuse3).
            module = importlib.import_module(f"ringfs.tools.{module_name}")
            handler: Callable[[argparse.Namespace], int] = getattr(module, function)
            return handler(args)
        except BaseExceptionGroup as group:
            # Nurseries wrap a failure in a group; a single failure is reported as itself.
            leaf = _only_leaf(group)
            if leaf is None:
                raise
            raise leaf from None
    except KeyboardInterrupt:
        return 130
    except Departed as exc:  # a node that left the cluster is done, not failed
        log.info("%s: stopping", exc)
        return 0
    except (UserError, ConfigError, background.StartError, ValueError) as exc:
        return _fail(str(exc), ready_fd)
    except AuthenticationError as exc:
        return _fail(f"authentication failed: {exc} (is --secret-file the cluster's?)", ready_fd)
    except Unavailable as exc:
        return _fail(f"cannot reach the cluster: {exc}", ready_fd)
    except NodeError as exc:
        return _fail(f"the cluster refused: {exc}", ready_fd)
    except StorageFailure as exc:
        return _fail(f"stopped: {exc}", ready_fd)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        return _fail(f"{reason or exc}", ready_fd)


def _only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _fail(message: str, ready_fd: int | None) -> int:
    print(f"ringfs: {message}", file=sys.stderr)
    background.report(ready_fd, f"error: {message}")
    return 1
