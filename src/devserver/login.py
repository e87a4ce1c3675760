"""What a cloud accepts for the spec's ``ssh`` section: the admin user names and SSH key types (and RSA sizes) its
key import and VM creation take, read from the cloud's :class:`~devserver.registry.LoginFacts`.

:mod:`devserver.spec` runs :func:`check` after the spec's own checks, so `devserver validate` refuses what the
cloud would refuse only at `pulumi up`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from devserver.errors import FieldError
from devserver.registry import Cloud


def check(admin_user: str, public_keys: Sequence[str], cloud: Cloud) -> None:
    """Raise :class:`FieldError` (paths from the spec's root) for the first of `admin_user` and `public_keys` (lines
    the spec has already checked for OpenSSH form) that `cloud` refuses."""
    login = cloud.login
    if admin_user in login.reserved_users:
        raise FieldError(
            "ssh.admin_user", f"is reserved on {cloud.title}", "choose another name, e.g. devserver", admin_user
        )
    for index, key in enumerate(public_keys):
        path = f"ssh.public_keys.{index}"
        key_type, blob = key.split()[:2]
        accepted = ", ".join(sorted(login.key_types))
        if key_type not in login.key_types:
            raise FieldError(
                path, f"{cloud.title} does not accept {key_type} keys", f"use a key of type {accepted}", key_type
            )
        if key_type == "ssh-rsa" and login.min_rsa_bits:
            bits = _rsa_bits(blob)
            if bits is None:
                raise FieldError(path, "is not a readable ssh-rsa key", "paste the one line of your ~/.ssh/*.pub file")
            if bits < login.min_rsa_bits:
                raise FieldError(
                    path,
                    f"is a {bits}-bit RSA key; {cloud.title} needs at least {login.min_rsa_bits}",
                    f"make a new key: ssh-keygen -t ed25519 (or -t rsa -b {max(login.min_rsa_bits, 3072)})",
                    f"{bits} bits",
                )


def _rsa_bits(blob: str) -> int | None:
    """The modulus size of an ssh-rsa public key blob (RFC 4253 6.6: string type, mpint e, mpint n); None when the
    blob does not decode as one."""
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    fields: list[bytes] = []
    offset = 0
    while offset < len(data) and len(fields) < 3:
        size = int.from_bytes(data[offset : offset + 4], "big")
        offset += 4
        if offset + size > len(data):
            return None
        fields.append(data[offset : offset + size])
        offset += size
    if len(fields) != 3 or fields[0] != b"ssh-rsa":
        return None
    return int.from_bytes(fields[2], "big").bit_length()
