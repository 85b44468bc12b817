"""Domain errors shared by nodes and clients.

Errors cross the wire as errno *names* ("ENOENT"), never numbers, because errno numbers differ
between platforms. Every error a node can send is a `NodeError` carrying such a name; the client
maps the name back to a local errno in exactly one place (`ringfs.fs.errors`).
"""

from __future__ import annotations

import errno

# Names a node may put in the error field of a response, beyond plain errno names.
#: A block copy failed its checksum: the replica is bad, try another one.
CORRUPT = "EBADMSG"
#: A metadata call reached a node without the metadata; the detail names the one that has it.
NOT_META = "ENOTMETA"
#: A meta-group member that does not lead (or lost the lead mid-call); the detail names the
#: leader it knows of, or is empty during an election. The member did not propose the command,
#: so it is not in any log: retrying the same call is safe, giving up is too.
NOT_LEADER = "ENOTLEADER"
#: A chunk commit whose expectations no longer hold: another client changed the chunks (or, for
#: an append, the size) since this one read them. Nothing was changed; the client reads the file
#: again, lays its own writes over what it finds, and commits again.
CHANGED = "ECHANGED"
#: The leader proposed the command but lost the lead before it knew the outcome: it may still be
#: committed by a later leader. Only a retry with the same (client id, seq) tells, so a caller
#: must not report a failure for it. The detail names the leader it knows of, as NOT_LEADER.
IN_DOUBT = "EINDOUBT"
#: A namespace command on a directory another mount holds (see `ringfs.node.meta.delegations`):
#: nothing was changed and nothing is remembered for the session; the leader recalls the
#: directory and proposes the command again. A mount never sees it.
DELEGATED = "EDELEGATED"
#: A command in a session the metadata ended (`Expire`: the client was silent too long) or
#: never opened. It was not run now, and the outcome of any earlier copy is forgotten: the
#: client must report it as failed and open a new session.
SESSION_EXPIRED = "ESESSIONEXPIRED"

#: The caller placed a block by an older cluster map than the node's, and the node cannot do
#: what it asked under the newer one; the detail is the node's map (JSON): go by it and retry.
NEWER_MAP = "ENEWMAP"


class NodeError(Exception):
    """A failure with a wire name: raised by node logic, sent as an error reply, raised again
    on the client by the RPC layer."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail

    @property
    def errno(self) -> int:
        """The local errno for this name; EIO for names this platform does not know."""
        return errno_for(self.name)


def errno_for(name: str) -> int:
    """Map a wire error name to this platform's errno number (EIO when unknown)."""
    value = getattr(errno, name, None)
    return value if isinstance(value, int) else errno.EIO


class ProtocolError(Exception):
    """The peer broke the wire protocol (malformed, oversized or unexpected message).

    The connection it happened on is closed; nothing else is affected.
    """


class AuthenticationError(ProtocolError):
    """The peer did not prove it holds the cluster secret, or speaks another version."""


class ForeignCluster(AuthenticationError):
    """The peer holds the secret but belongs to another cluster (another cluster id)."""


class Unavailable(Exception):
    """No replica or node could answer in time: surfaces as EIO at the mount."""

    def __init__(self, what: str, tried: list[str] | None = None) -> None:
        super().__init__(f"{what} unavailable (tried: {', '.join(tried or []) or 'none'})")
        self.what = what
        self.tried = tried or []


class NoReply(Unavailable):
    """The request went out (at least partly) but no answer came back: unlike a plain
    `Unavailable`, the node may have received it and acted on it."""


class ConfigError(Exception):
    """A node or mount cannot start with this configuration: a user mistake, one line."""


class Departed(Exception):
    """This node was removed from the cluster map (it was drained, or an operator removed it):
    it has nothing more to serve, and stops."""


class StorageFailure(Exception):
    """This node's own metadata storage failed (a full disk, an I/O error). The node stops
    rather than answer from a state its peers do not share; its Raft log replays the rest
    when it restarts."""
