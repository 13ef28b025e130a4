"""Password and secret hashes: scrypt (hashlib), or PBKDF2-SHA256 for hashes made elsewhere.

A hash reads ``scrypt$<n>$<r>$<p>$<salt>$<key>`` or ``pbkdf2_sha256$<iterations>$<salt>$<key>``
(salt and key in unpadded urlsafe base64). Checking a secret takes the same work whether or not
the user exists (``check_nothing``), so a refusal tells nothing about which users exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
_MAXMEM = 64 << 20


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def valid_hash(stored: str) -> bool:
    """Well formed (checked when the identity file is loaded, so a typo is not a silent lock-out)."""
    try:
        _derive("", stored, probe=True)
    except (ValueError, TypeError):
        return False
    return True


def _derive(secret: str, stored: str, probe: bool = False) -> tuple[bytes, bytes]:
    parts = stored.split("$")
    if parts[0] == "scrypt" and len(parts) == 6:
        n, r, p = (int(x) for x in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or not key:
            raise ValueError("bad scrypt parameters")
        if probe:
            return key, key
        return hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(key)), key
    if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
        iterations = int(parts[1])
        salt, key = _unb64(parts[2]), _unb64(parts[3])
        if iterations < 1 or not key:
            raise ValueError("bad pbkdf2 parameters")
        if probe:
            return key, key
        return hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8", "surrogatepass"), salt, iterations, dklen=len(key)), key
    raise ValueError("unknown hash format")


def check_secret(secret: str, stored: str) -> bool:
    try:
        derived, key = _derive(secret, stored)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(derived, key)


_DUMMY = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(b'0' * 16)}${_b64(b'0' * 64)}"


def check_nothing(secret: str) -> bool:
    """The work of a check, for a user or credential that does not exist; always False."""
    check_secret(secret, _DUMMY)
    return False
