"""TLS and credentials for Consul connections, from PEM text.

The CLI reads PEM files and the operator reads Secrets; both end here, so certificate handling
is written once. Python's ssl module only loads a client certificate from a file, so the
certificate and key go to a private temporary directory for the duration of the load and are
removed at once (a read-only container must give /tmp as an emptyDir).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path


def build_ssl_context(
    *,
    ca_pem: str | None = None,
    cert_pem: str | None = None,
    key_pem: str | None = None,
    insecure_skip_verify: bool = False,
) -> ssl.SSLContext:
    """A client context: the given CA (else the system store), an optional client cert."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_pem and key_pem:
        with tempfile.TemporaryDirectory(prefix="consul-sd-tls-") as directory:
            os.chmod(directory, 0o700)
            cert_file = Path(directory, "tls.crt")
            key_file = Path(directory, "tls.key")
            cert_file.write_text(cert_pem)
            key_file.touch(mode=0o600)
            key_file.write_text(key_pem)
            context.load_cert_chain(cert_file, key_file)
    return context
