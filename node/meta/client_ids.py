"""Client ids a credential vouches for, so that a key holder cannot act in another's session.

A metadata session is named by its client's id, and every mount learns the ids of the others
(each record of the change feed names the client whose command it was). An id taken as given
would let any key holder act in another mount's session: send commands under its sequence
numbers, poll the feed as it (telling the leader that mount heard of changes it never saw, and
so breaking close-to-open for it), or keep a dead mount's directories held.

So an id is 8 random bytes and the first 8 bytes of HMAC-SHA256(secret, tag, those bytes), the
secret being the one the client connects with: its key's, or the cluster secret. A node checks
the id of each metadata call of a key holder against that key's secret (`minted_with`); nothing
needs storing, and the id names the key without saying which. The cluster secret's holders may
act as anyone, ids included.
"""

from __future__ import annotations

import hashlib
import hmac
import os

#: Bytes of a client id: the random part, then the part that proves the secret.
CLIENT_ID_SIZE = 16
_RANDOM = 8
_TAG = b"ringfs client id\0"


def mint_client_id(secret: bytes) -> bytes:
    """A fresh client id vouched for by `secret`."""
    random = os.urandom(_RANDOM)
    return random + _proof(secret, random)


def minted_with(secret: bytes, client_id: bytes) -> bool:
    """Whether `client_id` was minted with `secret`."""
    if len(client_id) != CLIENT_ID_SIZE:
        return False
    random, proof = client_id[:_RANDOM], client_id[_RANDOM:]
    return hmac.compare_digest(proof, _proof(secret, random))


def _proof(secret: bytes, random: bytes) -> bytes:
    return hmac.new(secret, _TAG + random, hashlib.sha256).digest()[: CLIENT_ID_SIZE - _RANDOM]
