"""Client ids a key vouches for: only that key's secret checks one (`node/meta/client_ids.py`)."""

from __future__ import annotations

from ringfs.node.meta.client_ids import CLIENT_ID_SIZE, mint_client_id, minted_with

KEY, OTHER = b"k" * 32, b"o" * 32


def test_an_id_is_checked_by_the_secret_it_was_minted_with_only() -> None:
    ids = {mint_client_id(KEY) for _ in range(100)}
    assert len(ids) == 100  # fresh each time
    for client_id in ids:
        assert len(client_id) == CLIENT_ID_SIZE
        assert minted_with(KEY, client_id)
        assert not minted_with(OTHER, client_id)


def test_an_altered_or_made_up_id_is_not_vouched_for() -> None:
    client_id = mint_client_id(KEY)
    for spoiled in range(CLIENT_ID_SIZE):  # one bit of any byte
        changed = bytearray(client_id)
        changed[spoiled] ^= 1
        assert not minted_with(KEY, bytes(changed))
    for made_up in (b"", client_id[:-1], client_id + b"\0", bytes(CLIENT_ID_SIZE)):
        assert not minted_with(KEY, made_up)
