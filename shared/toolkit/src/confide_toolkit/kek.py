"""Key-encryption keys (KEKs): the keys that wrap every data key in a service's keyring.

The keyring never sees a KEK. It asks a provider to `wrap` a fresh data key (getting back the KEK
version it used and the wrapped bytes it stores) and to `unwrap` a stored one. Providers are
versioned so that a KEK can be rotated: `rotate` makes a new version current, the keyring's
`rewrap_all` re-wraps every data key under it without touching any data, and after a grace window
(the backup retention) `retire` destroys the old version, so that no older backup of the database
can unwrap anything it holds.

Choosing a provider
-------------------
A service's provider is chosen by configuration: `CONFIDE_KEK_PROVIDER` names it (the settings'
`kek_provider`), and `keks_from_settings` builds it when the service starts. The one provider
that ships is `local-file` (`LocalKeyFile`, the default), a key file on the service's host
(`CONFIDE_KEK_FILE`). A name that no provider is registered under stops the service at start,
naming the setting and the known names, rather than starting without its keys.

Adding a provider
-----------------
There is no KMS adapter here (no Vault, no AWS KMS): a deployment that keeps its KEKs in one
writes a class of its own with the shape of `KeyEncryptionKeys` and registers a function that
builds it from the settings, in the service's `app.py` (or a module it imports) before the
`Service` is built:

    register_kek_provider("acme-kms", lambda settings: AcmeKmsKeys(AcmeKmsSettings()))

A provider that needs settings of its own (an address, a key name, credentials) reads them from
the environment itself, as `AcmeKmsSettings` would, under its own `CONFIDE_KEK_...` names.

What a provider must do:

- `current_version` is the version `wrap` uses now; versions only ever grow, so that a data key's
  stored version always names the KEK that wrapped it.
- `wrap` returns the version it used with the wrapped bytes; `unwrap` gives back exactly the data
  key given to `wrap`, raises `RetiredKekVersion` for a version that no longer exists and
  `CorruptWrappedKey` for bytes that do not authenticate under the version (a wrapped key
  relabelled with another version must fail, not unwrap to garbage).
- The KEK itself never leaves the provider; only data keys cross the interface.
- The methods are synchronous because the local provider is pure CPU work. The keyring calls them
  on the event loop's thread and caches every unwrap, so a remote provider costs one round trip
  per data key per process and must bound that call with a short timeout.

Rotation (`rotate`, `retire`) is the provider's own business, not part of the interface: the
keyring only needs `rewrap_all` to move every data key onto the current version before an old one
is retired.

The schedule
------------
`KekSchedule` (settings `CONFIDE_KEK_ROTATION_PERIOD`, 30 days by default, and
`CONFIDE_KEK_BACKUP_RETENTION`, 35 days) says when a version is replaced and when it dies: a
version current for a rotation period is superseded, every data key is re-wrapped under its
successor, and the superseded version is destroyed once the backup retention has passed since,
when the last backup that could hold a key wrapped under it has aged out. `confide_toolkit.keys`
carries it out (`python -m confide_toolkit.keys status|rotate|maintain`). So an erased key, gone
from the live database at `erased_at` but still in the backups taken before, can be unwrapped
by no backup from `backups_clear_from(erased_at)` on: the date an erasure certificate states.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from confide_toolkit.clock import Clock, SystemClock
from confide_toolkit.settings import ServiceSettings

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


class UnknownKekProvider(KekError):
    """The configured KEK provider is not registered: the service cannot start without its keys."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"CONFIDE_KEK_PROVIDER={name!r} names no key-encryption-key provider; "
            f"known providers: {', '.join(known)}"
        )
        self.name = name
        self.known = known


class KeyEncryptionKeys(Protocol):
    """A versioned source of key-encryption keys (what a provider must do: the module docstring)."""

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
    # When each version was made (files written before the schedule existed have none).
    created: Mapping[int, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class KekVersion:
    """One version of a key file as the schedule sees it (no key material)."""

    version: int
    created_at: datetime | None
    superseded_at: datetime | None
    """When its successor was made (None while it is current, or unknown for an old file)."""
    current: bool


class KekSchedule(BaseSettings):
    """When KEK versions are replaced and destroyed: settings `CONFIDE_KEK_ROTATION_PERIOD`,
    `CONFIDE_KEK_BACKUP_RETENTION` and `CONFIDE_KEK_MAINTENANCE_INTERVAL`, ISO 8601 durations
    (`P30D`, `PT1H`; tests set seconds, `PT90S`)."""

    model_config = SettingsConfigDict(env_prefix="CONFIDE_KEK_", extra="ignore")

    rotation_period: timedelta = Field(
        default=timedelta(days=30),
        gt=timedelta(0),
        description="how long a version wraps new data keys before a successor replaces it",
    )
    backup_retention: timedelta = Field(
        default=timedelta(days=35),
        ge=timedelta(0),
        description="how long backups are kept: a superseded version is destroyed this long "
        "after its successor took over, so no backup older than that can unwrap anything",
    )

    maintenance_interval: timedelta = Field(
        default=timedelta(days=1),
        ge=timedelta(0),
        description="how often `python -m confide_toolkit.keys maintain` runs (a timer): a "
        "rotation and a destruction can each come this much late, which `backups_clear_from` "
        "allows for",
    )

    def rotation_due(self, current: KekVersion, now: datetime) -> bool:
        """Whether the current version has served its period (an undated one has)."""
        return current.created_at is None or now >= current.created_at + self.rotation_period

    def dies_at(self, version: KekVersion, now: datetime) -> datetime | None:
        """When `version` is destroyed: its successor's start plus the backup retention; for the
        current version, as scheduled (its next rotation, or now if overdue). None when an old
        file does not say when its successor was made."""
        if version.current:
            due = version.created_at + self.rotation_period if version.created_at else now
            return max(due, now) + self.backup_retention
        if version.superseded_at is None:
            return None
        return version.superseded_at + self.backup_retention


def backups_clear_from(erased_at: datetime, schedule: KekSchedule | None = None) -> datetime:
    """From when no backup can unwrap a data key shredded at `erased_at`, in any service that
    follows `schedule` (the settings' when None): what an erasure certificate states.

    The shredded key survives only in backups taken before `erased_at`, wrapped under the
    version current then (or an older one, destroyed earlier). That version is superseded at
    the latest one rotation period after `erased_at` and destroyed one backup retention after
    that, each step up to one maintenance interval late (the timer's period). Retention cannot
    read the owners' key files, so it takes this bound, which holds for every owner that runs
    `maintain` on its timer; `KekLifecycle.backups_clear_from` gives one service's exact date."""
    schedule = schedule or KekSchedule()
    return (
        erased_at
        + schedule.rotation_period
        + schedule.backup_retention
        + 2 * schedule.maintenance_interval
    )


# Why AES-256-GCM rather than AES key wrap (RFC 3394/5649): GCM takes associated data, so the KEK
# version is bound to the wrapped key and a wrapped key relabelled with another version fails
# loudly instead of unwrapping to garbage; it is the same construction Vault transit and AWS KMS
# use for their own wrapping, and the same primitive the keyring already uses for data, so there is
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

    Suited to development and single-host deployments; a deployment that keeps its KEKs in a KMS
    registers a provider of its own (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], clock: Clock | None = None) -> None:
        self._path = Path(path)
        self._clock: Clock = clock or SystemClock()
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

    def lifecycle(self) -> list[KekVersion]:
        """Every version that still exists, oldest first, with when it was made and replaced."""
        contents = self._load()
        created = contents.created
        ordered = sorted(contents.versions)
        result = []
        for version in ordered:
            successors = [v for v in sorted(created) if v > version]
            result.append(
                KekVersion(
                    version=version,
                    created_at=created.get(version),
                    superseded_at=created[successors[0]] if successors else None,
                    current=version == contents.current,
                )
            )
        return result

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

    def rotate(self, *, if_made_by: datetime | None = None) -> int:
        """Adds a new random version and makes it current; returns the current version.

        With `if_made_by`, only when the current version was made by then (or is
        undated): decided under the file's lock, so replicas that all find a rotation due make
        one new version, not one each. Versions only ever grow, so a retired number is never
        reused."""
        with self._exclusive():
            contents = self._read_or_create()
            made = contents.created.get(contents.current)
            if if_made_by is not None and made is not None and made > if_made_by:
                return contents.current
            version = max(contents.current, *contents.versions) + 1
            versions = {**contents.versions, version: os.urandom(KEK_BYTES)}
            created = {**contents.created, version: self._clock.now()}
            self._write(_KeyFileContents(current=version, versions=versions, created=created))
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
            # Its date stays: it says when the next older version was superseded.
            self._write(
                _KeyFileContents(
                    current=contents.current, versions=versions, created=contents.created
                )
            )

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
            self._write(
                _KeyFileContents(
                    current=1,
                    versions={1: os.urandom(KEK_BYTES)},
                    created={1: self._clock.now()},
                )
            )
        return self._read()

    def _read(self) -> _KeyFileContents:
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
            current = int(document["current"])
            versions = {
                int(version): base64.b64decode(encoded, validate=True)
                for version, encoded in document["versions"].items()
            }
            created = {
                int(version): datetime.fromisoformat(stamp)
                for version, stamp in document.get("created", {}).items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
            raise KeyFileInvalid(f"{self._path} is not a valid key file") from error
        if current not in versions:
            raise KeyFileInvalid(f"{self._path}: the current version {current} is missing")
        if any(len(key) != KEK_BYTES for key in versions.values()):
            raise KeyFileInvalid(f"{self._path}: every version must be {KEK_BYTES} bytes")
        return _KeyFileContents(current=current, versions=versions, created=created)

    def _write(self, contents: _KeyFileContents) -> None:
        document = {
            "current": contents.current,
            "versions": {
                str(version): base64.b64encode(key).decode("ascii")
                for version, key in sorted(contents.versions.items())
            },
            "created": {
                str(version): stamp.isoformat()
                for version, stamp in sorted(contents.created.items())
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


KekProvider = Callable[[ServiceSettings], KeyEncryptionKeys]
"""Builds a service's key-encryption keys from its settings, once, when the service starts."""

LOCAL_FILE = "local-file"
"""The default provider: `LocalKeyFile` on the settings' `kek_file`."""


def _local_key_file(settings: ServiceSettings) -> KeyEncryptionKeys:
    return LocalKeyFile(settings.kek_file)


_providers: dict[str, KekProvider] = {LOCAL_FILE: _local_key_file}


def register_kek_provider(name: str, provider: KekProvider) -> None:
    """Makes `provider` selectable as `CONFIDE_KEK_PROVIDER=<name>`.

    Refuses a name already taken, so that a provider never silently replaces another (the local
    file included)."""
    if name in _providers:
        raise ValueError(f"a key-encryption-key provider is already registered as {name!r}")
    _providers[name] = provider


def unregister_kek_provider(name: str) -> None:
    """Forgets a provider registered by `register_kek_provider` (tests register throwaway ones);
    the local file stays."""
    if name != LOCAL_FILE:
        _providers.pop(name, None)


def kek_provider_names() -> list[str]:
    """The names `CONFIDE_KEK_PROVIDER` may take, sorted."""
    return sorted(_providers)


def keks_from_settings(settings: ServiceSettings) -> KeyEncryptionKeys:
    """The key-encryption keys the settings choose (`kek_provider`); raises `UnknownKekProvider`
    for a name no provider is registered under."""
    provider = _providers.get(settings.kek_provider)
    if provider is None:
        raise UnknownKekProvider(settings.kek_provider, kek_provider_names())
    return provider(settings)
