"""Key-encryption keys (KEKs): the keys that wrap every data key in a service's keyring.

The keyring never sees a KEK. It asks a provider to `wrap` a fresh data key (getting back the KEK
version it used and the wrapped bytes it stores) and to `unwrap` a stored one. Providers are
versioned so that a KEK can be rotated: `rotate` makes a new version current, the keyring's
`rewrap_all` re-wraps every data key under it without touching any data, and after a grace window
(the backup retention) `retire` destroys the old version, so that no older backup of the database
can unwrap anything it holds.

Plugging in a real KMS
----------------------
Anything with the shape of `KeyEncryptionKeys` will do; the keyring depends on nothing else.

- **Vault transit**: `wrap` calls `transit/encrypt/<key>` on the base64 data key and returns
  `(key_version, ciphertext)`, where Vault's ciphertext `vault:v<N>:...` carries the version N that
  `current_version` reports (`transit/keys/<key>` → `latest_version`); `unwrap` calls
  `transit/decrypt/<key>`. Rotation is `transit/keys/<key>/rotate`, retirement is raising
  `min_decryption_version` (and trimming), and `rewrap_all` maps naturally onto `transit/rewrap`.
- **AWS KMS**: `wrap` is `Encrypt` (or `GenerateDataKey`) under a key alias, with an
  `EncryptionContext` that names the service; `unwrap` is `Decrypt`. KMS rotates its backing key
  material itself and keeps old material, so the version can be a number the adapter keeps per
  alias (one KMS key per version, the alias pointing at the current one); retiring a version is
  scheduling that KMS key's deletion.

Either way the KEK never leaves the KMS and only data keys cross the wire. The methods are
synchronous because the local provider is pure CPU work; a remote provider costs one network round
trip per data key per process (the keyring caches every unwrap), and should bound that call with a
short timeout, since the keyring calls it on the event loop's thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEK_BYTES = 32
"""A KEK is an AES-256 key."""

_NONCE_BYTES = 12
_TAG_BYTES = 16


class KekError(Exception):
    """Something is wrong with a key-encryption key; never carries key material."""


class RetiredKekVersion(KekError):
    """The KEK version a data key was wrapped under no longer exists: it was retired (destroyed).

    Whatever was wrapped under it can never be unwrapped again. Reaching this for live data means a
    version was retired before `Keyring.rewrap_all` had moved every data key off it."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"KEK version {version} is retired: data keys still wrapped under it cannot be "
            "unwrapped (re-wrap before retiring a version)"
        )
        self.version = version


class CorruptWrappedKey(KekError):
    """A wrapped data key does not authenticate under its KEK version: it was altered, or stored
    under the wrong version."""

    def __init__(self, version: int) -> None:
        super().__init__(f"wrapped data key does not authenticate under KEK version {version}")
        self.version = version


class CannotRetireCurrentKek(KekError):
    """The current KEK version is the one new data keys are wrapped under; rotate first."""


class KeyFileInvalid(KekError):
    """The local key file exists but is not a well-formed key file."""


class KeyEncryptionKeys(Protocol):
    """A versioned source of key-encryption keys: a local key file, or a KMS behind an adapter."""

    @property
    def current_version(self) -> int:
        """The version `wrap` uses now."""
        ...

    def wrap(self, data_key: bytes) -> tuple[int, bytes]:
        """Wraps a data key under the current version; returns (version, wrapped bytes)."""
        ...

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        """The data key wrapped under `version`; raises `RetiredKekVersion` if the version no
        longer exists and `CorruptWrappedKey` if the wrapped bytes do not authenticate."""
        ...


@dataclass(frozen=True)
class _KeyFileContents:
    current: int
    versions: Mapping[int, bytes]


# Why AES-256-GCM rather than AES key wrap (RFC 3394/5649): GCM takes associated data, so the KEK
# version is bound to the wrapped key and a wrapped key relabelled with another version fails
# loudly instead of unwrapping to garbage; it is the same construction Vault transit and AWS KMS
# use behind this interface, and the same primitive the keyring already uses for data, so there is
# one primitive to review. Its one hazard, nonce reuse, is out of reach here: random 96-bit nonces
# stay safe for up to 2^32 wraps per KEK version, and a version wraps at most one data key per
# (person, category) plus one re-wrap of each at rotation.
def _associated_data(version: int) -> bytes:
    return b"confide.kek.v1:" + str(version).encode("ascii")


class LocalKeyFile:
    """KEKs kept in a local JSON file: `{"current": N, "versions": {"1": "<base64>", ...}}`.

    The file (and its folder) is created on first use when missing, readable by its owner only
    (0600), holding one random 256-bit version. Every change is written to a temporary file,
    flushed to disk and moved into place with `os.replace`, under an exclusive lock on a sibling
    `.lock` file, so a crash or a second process never leaves a half-written file or loses a
    version. Every access notices when the file was replaced (by `rotate`/`retire` in another
    process) and reads it again, so replicas see a rotation or a retirement at once.

    Suited to development and single-host deployments; production should put the KEK in a KMS
    (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._contents: _KeyFileContents | None = None
        self._stamp: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current_version(self) -> int:
        return self._load().current

    @property
    def versions(self) -> list[int]:
        """The versions that still exist, oldest first."""
        return sorted(self._load().versions)

    def wrap(self, data_key: bytes) -> tuple[int, bytes]:
        contents = self._load()
        version = contents.current
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(contents.versions[version]).encrypt(
            nonce, data_key, _associated_data(version)
        )
        return version, nonce + sealed

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        kek = self._load().versions.get(version)
        if kek is None:
            raise RetiredKekVersion(version)
        if len(wrapped) < _NONCE_BYTES + _TAG_BYTES:
            raise CorruptWrappedKey(version)
        nonce, sealed = wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:]
        try:
            return AESGCM(kek).decrypt(nonce, sealed, _associated_data(version))
        except InvalidTag:
            raise CorruptWrappedKey(version) from None

    def rotate(self) -> int:
        """Adds a new random version and makes it current; returns it.

        Versions only ever grow, so a retired number is never reused."""
        with self._exclusive():
            contents = self._read_or_create()
            version = max(contents.current, *contents.versions) + 1
            versions = {**contents.versions, version: os.urandom(KEK_BYTES)}
            self._write(_KeyFileContents(current=version, versions=versions))
        return version

    def retire(self, version: int) -> None:
        """Destroys an old version: data keys still wrapped under it can never be unwrapped again.

        Refuses the current version (`CannotRetireCurrentKek`). Retiring a version that is already
        gone does nothing. Run `Keyring.rewrap_all` first, and wait out the backup retention if
        older backups must become unreadable only after that window."""
        with self._exclusive():
            contents = self._read_or_create()
            if version == contents.current:
                raise CannotRetireCurrentKek(
                    f"KEK version {version} is current; rotate before retiring it"
                )
            if version not in contents.versions:
                return
            versions = {v: k for v, k in contents.versions.items() if v != version}
            self._write(_KeyFileContents(current=contents.current, versions=versions))

    def _load(self) -> _KeyFileContents:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            with self._exclusive():
                self._read_or_create()
            stat = os.stat(self._path)
        # os.replace gives the file a new inode, so this notices every rewrite, from any process.
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._contents is None or stamp != self._stamp:
            self._contents, self._stamp = self._read(), stamp
        return self._contents

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _read_or_create(self) -> _KeyFileContents:
        """Under the lock: the file's contents, creating the file with one version if missing."""
        if not self._path.exists():
            self._write(_KeyFileContents(current=1, versions={1: os.urandom(KEK_BYTES)}))
        return self._read()

    def _read(self) -> _KeyFileContents:
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
            current = int(document["current"])
            versions = {
                int(version): base64.b64decode(encoded, validate=True)
                for version, encoded in document["versions"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
            raise KeyFileInvalid(f"{self._path} is not a valid key file") from error
        if current not in versions:
            raise KeyFileInvalid(f"{self._path}: the current version {current} is missing")
        if any(len(key) != KEK_BYTES for key in versions.values()):
            raise KeyFileInvalid(f"{self._path}: every version must be {KEK_BYTES} bytes")
        return _KeyFileContents(current=current, versions=versions)

    def _write(self, contents: _KeyFileContents) -> None:
        document = {
            "current": contents.current,
            "versions": {
                str(version): base64.b64encode(key).decode("ascii")
                for version, key in sorted(contents.versions.items())
            },
        }
        # mkstemp creates the file 0600 whatever the umask, so the keys are never readable by
        # others, not even for an instant before a chmod.
        fd, temporary = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=2)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self._path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        # Flush the rename too: losing a rotation after data keys were re-wrapped under it would
        # make every one of them unreadable.
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
