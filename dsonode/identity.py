"""The node's identity: one Ed25519 key, kept in the data directory with mode 0600.

It signs everything the node authors (experiences, submissions); the network layer derives
the libp2p peer id from the same key. Stored as unencrypted PKCS#8 PEM, which `openssl pkey`
reads. A key file that group or others can read is refused, as ssh does: a leaked key lets
anyone speak as this node.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core.errors import DsoError

MAX_KEY_FILE_BYTES = 4096


class IdentityError(DsoError):
    """The key file is unsafe or unreadable."""


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key (the `author` field of everything this node signs)."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte seed (what libp2p's Ed25519 key type is built from)."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def load_key(path: Path) -> Ed25519PrivateKey:
    """Read the key at `path`, refusing a file that is not private to its owner."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot open key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise IdentityError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        if st.st_uid != os.getuid():
            raise IdentityError(f"key file {path} belongs to another user (uid {st.st_uid})")
        data = f.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise IdentityError(f"key file {path} is too large to be an Ed25519 key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"key file {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def create_key(path: Path) -> Ed25519PrivateKey:
    """Generate a key and write it atomically with mode 0600; never overwrite an existing one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if a key appeared meanwhile: the first one wins
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        return load_key(path)
    except FileNotFoundError:
        pass
    try:
        return create_key(path)
    except FileExistsError:  # another process created it between our two calls
        return load_key(path)
