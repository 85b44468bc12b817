"""TLS for the msgpack-RPC connections: a cluster CA, and a certificate for each node and client.

Both ends present a certificate and check the other's against the cluster's CA (mutual TLS),
so a connection is encrypted and only holders of a certificate of that CA get as far as the
handshake; the shared secret is then checked as without TLS. Names in certificates are not
checked: nodes and clients are reached by address, and any certificate of the cluster's CA is
one of its members (a test cluster's are made by `ringfs tls-init`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one node or client: the cluster's CA, and its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """For accepting connections: clients must present a certificate of the CA.

        Raises ValueError naming the file that cannot be used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_REQUIRED
        return self._load(context)

    def client_context(self) -> ssl.SSLContext:
        """For connecting: the node must present a certificate of the CA, and so do we.

        Raises ValueError naming the file that cannot be used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # reached by address: the CA is what is checked
        return self._load(context)

    def _load(self, context: ssl.SSLContext) -> ssl.SSLContext:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cafile=self.ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TLS CA file {self.ca}: {_reason(exc)}") from exc
        try:
            context.load_cert_chain(certfile=self.cert, keyfile=self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"TLS certificate {self.cert} with key {self.key}: {_reason(exc)}"
            ) from exc
        return context


def tls_files(ca: Path | None, cert: Path | None, key: Path | None) -> TlsFiles | None:
    """The TLS files given on a command line; None for none. Raises ValueError unless all three
    are given together."""
    given = [path for path in (ca, cert, key) if path is not None]
    if not given:
        return None
    if ca is None or cert is None or key is None:
        raise ValueError("give --tls-ca, --tls-cert and --tls-key together")
    return TlsFiles(ca, cert, key)


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
