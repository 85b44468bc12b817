"""Client keys: the credentials of mounts, which can call only what a client needs.

A key is a name and a secret. The secret is derived from the cluster (node) secret, the name
and a random salt: HMAC-SHA256(node secret, "ringfs client key" 0 name 0 salt). The cluster map
lists the keys in force by name and salt, which are not secret (nobody derives a key's secret
without the node secret), so every node checks a key on its own, with nothing stored but the
map, and a key is revoked by taking it out of the map. A key issued again under the same name
gets a new salt, so the old secret stays revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

#: Bytes of random salt per key.
SALT_SIZE = 16
#: The most keys a map lists: the map travels with every change and many answers.
MAX_KEYS = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def check_key_name(name: str) -> str:
    """`name`, if it can name a key; ValueError saying what a name may be otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"a key name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a "
            f"letter or digit, not {name[:80]!r}"
        )
    return name


def key_secret(node_secret: bytes, name: str, salt: bytes) -> bytes:
    """The secret of the key `name` issued with `salt`."""
    message = b"ringfs client key\0" + name.encode() + b"\0" + salt
    return hmac.new(node_secret, message, hashlib.sha256).digest()


def key_lookup(
    node_secret: bytes, salt_of: Callable[[str], bytes | None]
) -> Callable[[str], bytes | None]:
    """The secret of each key in force, given the salt of each (`salt_of`: None for a name
    not issued, or revoked): what a node's handshake checks a client's key against."""

    def lookup(name: str) -> bytes | None:
        salt = salt_of(name)
        return None if salt is None else key_secret(node_secret, name, salt)

    return lookup
