"""Checked values from command-line arguments, shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ringfs.node.blocks.space import Reserve
from ringfs.node.rpc.client import ClientConfig, split_address
from ringfs.node.rpc.tls import TlsFiles, tls_files
from ringfs.tools.local import LocalCluster, default_data_dir, read_secret


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def mountpoint(path: Path) -> Path:
    """An absolute, existing directory that is not mounted yet."""
    path = path.absolute()
    if not path.is_dir():
        raise UserError(f"mountpoint {path} does not exist or is not a directory")
    if os.path.ismount(path):
        raise UserError(f"{path} is already a mount point")
    return path


def fuse_options(args: argparse.Namespace) -> list[str]:
    """The `-o` options, split at commas as mount(8) does."""
    return [opt for value in args.options or [] for opt in value.split(",") if opt]


def passthrough(args: argparse.Namespace) -> list[str]:
    """Global flags a background child must get again."""
    flags = ["--debug"] if args.debug else []
    if args.debug_modules:
        flags += ["--debug-modules", args.debug_modules]
    return flags


def seeds(spec: str) -> tuple[str, ...]:
    """Addresses from "HOST:PORT,..." or "ID=HOST:PORT,..."."""
    addresses = tuple(part.split("=", 1)[-1].strip() for part in spec.split(",") if part.strip())
    for address in addresses:
        split_address(address)
    if not addresses:
        raise UserError("no node address given")
    return addresses


def size(text: str) -> int:
    """'4M', '1GiB', '512k', '4096' -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def reserve(text: str) -> Reserve:
    """'5%' -> that share of the disk; '1G', '64M', '0' -> that many bytes."""
    try:
        if text.strip().endswith("%"):
            return Reserve(percent=float(text.strip()[:-1]))
        return Reserve(size=size(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a reserve: {text!r} ({exc})") from None


def seconds(text: str) -> float:
    """'2.5' -> 2.5: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


#: Most nodes `ringfs up` starts on one machine.
MAX_LOCAL_NODES = 16


def node_count(text: str) -> int:
    """'5' -> 5: how many local nodes `ringfs up` starts."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LOCAL_NODES:
        raise argparse.ArgumentTypeError(f"not a node count from 1 to {MAX_LOCAL_NODES}: {text!r}")
    return int(text)


def tls(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files of `--tls-ca`, `--tls-cert` and `--tls-key` (None without)."""
    return tls_files(args.tls_ca, args.tls_cert, args.tls_key)


def client_config(secret: bytes, args: argparse.Namespace, key: str = "") -> ClientConfig:
    """How a client reaches the nodes: the cluster secret, or the secret of the client key
    `key`, and TLS if the options ask for it."""
    files = tls(args)
    return ClientConfig(secret, key, ssl_context=files.client_context() if files else None)


def cluster_access(args: argparse.Namespace) -> tuple[tuple[str, ...], ClientConfig]:
    """The node addresses and client settings (secret, TLS) of `--cluster`/`--secret-file`, or
    else of the local cluster of `ringfs up` in `--data` (or the default data directory)."""
    if args.cluster:
        if args.secret_file is None:
            raise UserError("--cluster needs --secret-file")
        return seeds(args.cluster), client_config(read_secret(args.secret_file), args)
    local = LocalCluster((args.data or default_data_dir()).absolute())
    spec = local.members()
    if spec is None:
        raise UserError(
            f"no local cluster in {local.data_dir}; give --cluster and "
            "--secret-file for another one"
        )
    return seeds(spec), ClientConfig(read_secret(local.secret_file))
