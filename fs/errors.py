"""The single place where failures become errno values for the kernel.

pyfuse3 handlers may only raise `FUSEError`; anything else ends the FUSE main loop. Every
handler runs inside `fuse_errors()`, which maps only the failures we expect:

- a node's error reply -> that errno (a local errno for the name, EIO if unknown);
- no replica or metadata node answered -> EIO, logged at ERROR;
- a protocol violation by a node -> EIO;
- a local OSError -> its own errno.

Anything else is a bug and is left to be loud.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pyfuse3

from ringfs.node.errors import NodeError, ProtocolError, Unavailable

log = logging.getLogger(__name__)


def errno_of(exc: BaseException) -> int | None:
    """The errno an expected failure maps to, or None for an unexpected one."""
    if isinstance(exc, NodeError):
        return exc.errno
    if isinstance(exc, Unavailable | ProtocolError):
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    return None


@contextmanager
def fuse_errors(operation: str) -> Iterator[None]:
    """Translate expected failures inside a FUSE handler into `FUSEError`."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except (NodeError, Unavailable, ProtocolError, OSError) as exc:
        code = errno_of(exc)
        assert code is not None
        if isinstance(exc, NodeError) and code != errno.EIO:
            log.debug("%s: %s", operation, exc)
        else:
            log.error("%s failed: %s", operation, exc)
        raise pyfuse3.FUSEError(code) from None
