"""`ringfs tls-init DIR NAME...`: a CA and certificates for a test cluster, with `openssl`.

It writes DIR/ca.pem and DIR/ca.key (the cluster's CA, valid ten years), and for each NAME (a
node or a client) DIR/NAME.pem and DIR/NAME.key, signed by that CA. Keys are EC P-256 and
readable by their owner only. Give a node or a client `--tls-ca DIR/ca.pem --tls-cert
DIR/NAME.pem --tls-key DIR/NAME.key`. For production, use your own PKI: any CA will do, and
names in certificates are not checked (see `ringfs.node.rpc.tls`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

from ringfs.tools.args import UserError
from ringfs.tools.local import keep_private

#: Days a certificate made here is valid.
CA_DAYS = 3650
DAYS = 825
_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def tls_init(args: argparse.Namespace) -> int:
    keep_private()
    directory: Path = args.directory
    if shutil.which("openssl") is None:
        raise UserError("tls-init needs the openssl command (apt-get install openssl)")
    for name in args.names:
        if not _NAME.fullmatch(name) or name == "ca":
            raise UserError(f"{name!r} is not a name for a certificate (letters, digits, ._-)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    if not ca.exists():
        _openssl("req", "-x509", *_CURVE, "-keyout", ca_key, "-out", ca, "-days", CA_DAYS,
                 "-subj", "/CN=ringfs cluster CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        print(f"{ca}: a new cluster CA")
    for name in args.names:
        cert, key, request = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr"))
        _openssl("req", *_CURVE, "-keyout", key, "-out", request, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key,
                 "-CAcreateserial", "-out", cert, "-days", DAYS)  # fmt: skip
        request.unlink()
        print(f"{cert}, {key}: {name}")
    return 0


def _openssl(*arguments: object) -> None:
    result = subprocess.run(
        ["openssl", *map(str, arguments)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise UserError(f"openssl {arguments[0]}: {last}")
