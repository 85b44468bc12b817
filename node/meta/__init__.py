"""The namespace: metadata commands and queries, the deterministic state machine on SQLite with
its schema, and the replicated service a meta-group member answers with."""
