"""The adapter store: server-owned, read-only copies of admitted adapters, named by their content.

vLLM re-reads an adapter's files from its path whenever the adapter leaves the host cache, with no check, and keys
its prefix cache by (name, path). Serving from the tenant's own folder therefore serves whatever is there *now*
(another adapter's weights, a rank the slots cannot hold) and reuses KV computed with older weights. Serving from
``<store>/sha256-<hex>/`` closes both: the copy cannot change (files 0444, directory 0555, in a directory tenants do
not write), and new content gets a new path, so every cache keyed by the path changes with it.

Use: ``stored = store.put(folder)``, then admit ``stored.path`` (never the folder: it may change after the copy),
then serve ``stored.path``. ``put`` copies only what vLLM and admission read (``adapter_config.json``,
``adapter_model.safetensors``, ``tenantserve-base.json``), each opened once (optionally refusing symlinks), checked
to be a regular file under a size cap, and read at most that many bytes. The content fingerprint (``sha256:`` + the
sha256 of the ``sha256sum`` manifest of those files, as in ``tenantserve.admission.fingerprint``) names the copy; a folder
whose files are unchanged since the fingerprint cache saw them costs a stat per file and no copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tenantserve.admission.adapter_dir import CONFIG_NAME, STAMP_NAME, WEIGHTS_NAME
from tenantserve.admission.admit import Admission, BaseFacts, EngineLora, admit
from tenantserve.admission.fingerprint import PREFIX, manifest_digest
from tenantserve.admission.fingerprint_cache import FileKey, FingerprintCache, default_cache_dir
from tenantserve.errors import AdapterError, TenantserveError
from tenantserve.registry.schema import AdapterSpec, Registry
from tenantserve.settings import ADAPTER_MAX_BYTES_ENV as MAX_BYTES_ENV
from tenantserve.settings import ADAPTER_STORE_ENV as STORE_ENV

#: The files an adapter is served from (what vLLM reads) and admitted with (the stamp declares the base).
STORED_FILES: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME, STAMP_NAME)
PICKLED_WEIGHTS: tuple[str, ...] = ("adapter_model.bin", "adapter_model.pt")
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30
_CHUNK = 4 << 20
_DIR_PREFIX = "sha256-"


class AdapterStoreError(TenantserveError):
    """The store itself cannot be written (disk full, permissions): a fault of the server, not of the adapter."""

    code = "store_unwritable"
    exit_code = 3
    http_status = 503


class StoreConfigError(AdapterStoreError):
    """The store's settings cannot be used (``TENANTSERVE_ADAPTER_MAX_BYTES`` not a positive number of bytes): the
    operator's to fix, exit 2 (README: "Errors and reason codes"), 503 at the sidecar."""

    code = "store_config"
    exit_code = 2


@dataclass(frozen=True)
class StoredAdapter:
    """One adapter's content in the store: where it is served from and what it is."""

    path: Path
    fingerprint: str
    files: Mapping[str, str]  # name -> sha256 hex
    copied: bool  # False: this content was in the store already


def default_store_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$TENANTSERVE_ADAPTER_STORE``, else ``adapters/`` in the fingerprint cache's directory."""
    env = os.environ if environ is None else environ
    if env.get(STORE_ENV):
        return Path(env[STORE_ENV])
    return default_cache_dir(env) / "adapters"


class AdapterStore:
    """Content-addressed, read-only adapter copies under ``root``. Cheap to construct; ``put`` does the I/O."""

    def __init__(self, root: Path, *, cache: FingerprintCache | None = None,
                 max_weights_bytes: int = MAX_WEIGHTS_BYTES, max_config_bytes: int = MAX_CONFIG_BYTES) -> None:
        self.root = Path(root).absolute()  # absolute: the engine lists adapters by the path they were loaded from
        self.cache = cache
        self.limits = {CONFIG_NAME: max_config_bytes, STAMP_NAME: max_config_bytes, WEIGHTS_NAME: max_weights_bytes}

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None, *, cache: FingerprintCache | None = None
                ) -> AdapterStore:
        """The store named by the environment (``TENANTSERVE_ADAPTER_STORE``, ``TENANTSERVE_ADAPTER_MAX_BYTES``)."""
        env = os.environ if environ is None else environ
        raw = env.get(MAX_BYTES_ENV)
        try:
            max_weights = int(raw) if raw else MAX_WEIGHTS_BYTES
        except ValueError:
            raise StoreConfigError(f"{MAX_BYTES_ENV}={raw!r} is not a number of bytes") from None
        if max_weights < 1:  # 0 or less would refuse every adapter, each with a message blaming the adapter
            raise StoreConfigError(f"{MAX_BYTES_ENV}={raw!r}: the largest weights file must be at least 1 byte")
        return cls(default_store_dir(env), cache=cache, max_weights_bytes=max_weights)

    def path_for(self, fingerprint: str) -> Path:
        """Where content with this fingerprint is (or would be) stored. Pure."""
        return self.root / (_DIR_PREFIX + fingerprint.removeprefix(PREFIX))

    def contains(self, path: Path | str) -> bool:
        """Is ``path`` a copy in this store (as vLLM lists it)? Pure."""
        p = Path(path)
        return p.parent == self.root and p.name.startswith(_DIR_PREFIX)

    def fingerprint_of(self, path: Path | str) -> str | None:
        """The content fingerprint a store path is named by (None for a path outside the store). Pure."""
        return PREFIX + Path(path).name.removeprefix(_DIR_PREFIX) if self.contains(path) else None

    # -- reading a tenant's folder ---------------------------------------------------------------------------------

    def digest(self, source: Path, *, who: str = "adapter", follow_symlinks: bool = True,
               inside: Path | None = None) -> str:
        """The content fingerprint of a folder as ``put`` would store it, without copying (a stat per unchanged file).

        Raises ``AdapterError`` (``path_missing``, ``path_escape``, ``file_symlink``, ``file_not_regular``,
        ``file_too_large``, ``unreadable``) exactly as ``put`` would."""
        with _Folder.open(source, who, inside) as folder:
            opened = folder.files(self.limits, follow_symlinks)
            try:
                return manifest_digest(self._digests(opened, who))
            finally:
                _close(opened)

    def put(self, source: Path, *, who: str = "adapter", follow_symlinks: bool = True,
            inside: Path | None = None) -> StoredAdapter:
        """Copy an adapter folder's served files into the store (once per content) and return the copy.

        ``follow_symlinks=False`` refuses symlinked files (a tenant's link to another tenant's weights); ``inside``:
        the folder must resolve inside it (checked on the opened directory, so a swapped link cannot escape).
        Raises ``AdapterError`` for the folder's faults and ``AdapterStoreError`` when the store cannot be written."""
        with _Folder.open(source, who, inside) as folder:
            opened = folder.files(self.limits, follow_symlinks)
            try:
                if WEIGHTS_NAME not in opened:
                    pickled = [n for n in PICKLED_WEIGHTS if folder.exists(n)]
                    if pickled:
                        raise AdapterError(f"{who}: {pickled[0]} is a pickle, which cannot be checked without "
                                           f"running it; convert it to {WEIGHTS_NAME}", code="weights_format")
                known = self._cached(opened)
                if known is not None:
                    value = manifest_digest(known)
                    if self._intact(self.path_for(value), known):
                        return StoredAdapter(self.path_for(value), value, known, copied=False)
                return self._copy(opened, who)
            finally:
                _close(opened)

    def _cached(self, opened: dict[str, _Open]) -> dict[str, str] | None:
        if self.cache is None:
            return None
        found = {name: self.cache.lookup(f.key) for name, f in opened.items()}
        return None if any(v is None for v in found.values()) else found  # type: ignore[return-value]

    def _digests(self, opened: dict[str, _Open], who: str) -> dict[str, str]:
        known = {}
        for name, f in opened.items():
            hit = self.cache.lookup(f.key) if self.cache is not None else None
            known[name] = hit or _hash_into(f, None, self.limits[name], who)
        if self.cache is not None:
            self.cache.store({f.key: known[n] for n, f in opened.items()})
        return known

    # -- writing the store -----------------------------------------------------------------------------------------

    def _copy(self, opened: dict[str, _Open], who: str) -> StoredAdapter:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        except OSError as exc:
            raise AdapterStoreError(f"cannot write the adapter store {self.root}: {exc.strerror or exc}") from None
        try:
            started = time.time_ns()
            digests = {}
            for name, f in opened.items():
                fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    digests[name] = _hash_into(f, out, self.limits[name], who)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp / name, 0o444)
            if self.cache is not None:
                self.cache.store({f.key: digests[n] for n, f in opened.items()}, hashed_at_ns=started)
            value = manifest_digest(digests)
            final = self.path_for(value)
            os.chmod(tmp, 0o555)
            _fsync_dir(tmp)
            self._install(tmp, final, digests)
            _fsync_dir(self.root)
        except OSError as exc:
            raise AdapterStoreError(f"cannot write the adapter store {self.root}: {exc.strerror or exc}") from None
        finally:
            if tmp.exists():
                _remove(tmp)
        return StoredAdapter(final, value, digests, copied=True)

    def _install(self, tmp: Path, final: Path, digests: dict[str, str]) -> None:
        """Rename the finished copy into place; content already there (a concurrent put) is kept if intact."""
        for _ in range(3):
            try:
                os.rename(tmp, final)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if self._intact(final, digests):
                return
            os.rename(final, self.root / f".broken-{final.name}-{time.time_ns()}")  # damaged by hand: set aside
        raise OSError(errno.EEXIST, f"{final} keeps changing")

    def _intact(self, path: Path, digests: Mapping[str, str]) -> bool:
        """Does the stored copy hold exactly these files with these digests? (stat-cached: cheap when unchanged)"""
        try:
            if sorted(os.listdir(path)) != sorted(digests):
                return False
            with _Folder.open(path, "stored adapter", None) as folder:
                opened = folder.files(self.limits, False)
                try:
                    return self._digests(opened, "stored adapter") == dict(digests)
                finally:
                    _close(opened)
        except (OSError, TenantserveError):
            return False


# -- safe reads ------------------------------------------------------------------------------------------------------


@dataclass
class _Open:
    name: str
    fd: int
    size: int
    key: FileKey


class _Folder:
    """An adapter folder opened once as a directory; its files are opened relative to it (no path re-walks)."""

    def __init__(self, fd: int, path: Path, who: str) -> None:
        self.fd, self.path, self.who = fd, path, who
        self.top: Path | None = None  # every opened file must really be inside it (links followed)

    @classmethod
    def open(cls, source: Path, who: str, inside: Path | None) -> _Folder:
        try:
            fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise AdapterError(f"{who}: path {source} is not a directory", code="path_missing") from None
        except OSError as exc:
            raise AdapterError(f"{who}: cannot open {source}: {exc.strerror}", code="unreadable") from None
        real = _real(fd, source)
        top = Path(os.path.realpath(inside)) if inside is not None else None
        if top is not None and (real == top or top not in real.parents):
            os.close(fd)
            raise AdapterError(f"{who}: path {source} resolves outside {inside}", code="path_escape")
        folder = cls(fd, real, who)
        folder.top = top
        return folder

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return True
        except OSError:
            return False

    def files(self, limits: Mapping[str, int], follow_symlinks: bool) -> dict[str, _Open]:
        """Open each stored file that exists: a regular file within its size cap (else ``AdapterError``)."""
        opened: dict[str, _Open] = {}
        try:
            for name in STORED_FILES:
                f = self._open(name, limits[name], follow_symlinks)
                if f is not None:
                    opened[name] = f
        except BaseException:
            _close(opened)
            raise
        return opened

    def _open(self, name: str, limit: int, follow: bool) -> _Open | None:
        where = f"{self.path}/{name}"
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(name, flags, dir_fd=self.fd)  # O_NONBLOCK: a FIFO must not hang the open
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AdapterError(f"{self.who}: {where} is a symbolic link; adapter files must be regular files "
                                   "in the adapter's own folder", code="file_symlink") from None
            raise AdapterError(f"{self.who}: cannot open {where}: {exc.strerror}", code="unreadable") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AdapterError(f"{self.who}: {where} is not a regular file", code="file_not_regular")
            if st.st_size > limit:
                raise AdapterError(f"{self.who}: {where} is {st.st_size} bytes, above the limit of {limit}",
                                   code="file_too_large")
            os.set_blocking(fd, True)
            real = _real(fd, Path(where))
            if self.top is not None and self.top not in real.parents:
                raise AdapterError(f"{self.who}: {where} resolves outside {self.top}", code="path_escape")
            key = FileKey(str(real), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
            return _Open(name, fd, st.st_size, key)
        except BaseException:
            os.close(fd)
            raise

    def __enter__(self) -> _Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _hash_into(f: _Open, out: object, limit: int, who: str) -> str:
    """sha256 of an opened file from its start, reading at most ``limit`` bytes (copying them to ``out``)."""
    digest = hashlib.sha256()
    offset = 0
    try:
        while True:
            chunk = os.pread(f.fd, min(_CHUNK, limit + 1 - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            if offset > limit:
                raise AdapterError(f"{who}: {f.name} grew above the limit of {limit} bytes while being read",
                                   code="file_too_large")
            digest.update(chunk)
            if out is not None:
                out.write(chunk)  # type: ignore[attr-defined]
    except OSError as exc:
        raise AdapterError(f"{who}: cannot read {f.name}: {exc.strerror}", code="unreadable") from None
    return digest.hexdigest()


def _real(fd: int, fallback: Path) -> Path:
    """Where an open file or directory really is (what was opened, not what the path names now)."""
    proc = f"/proc/self/fd/{fd}"
    return Path(os.readlink(proc)) if os.path.exists(proc) else Path(os.path.realpath(fallback))


def _close(opened: Mapping[str, _Open]) -> None:
    for f in opened.values():
        os.close(f.fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove an unfinished copy (its files and directory were made read-only)."""
    for p in (path, *path.iterdir()):
        os.chmod(p, 0o700)
    shutil.rmtree(path, ignore_errors=True)


# -- copy, then admit the copy ---------------------------------------------------------------------------------------


def admit_stored(registry: Registry, adapter: AdapterSpec, store: AdapterStore, *, max_lora_rank: int | None = None,
                 base: BaseFacts | None = None, cache: FingerprintCache | None = None, inside: Path | None = None,
                 follow_symlinks: bool = True, lora_config: EngineLora | None = None) -> tuple[StoredAdapter, Admission]:
    """Copy the adapter into the store, then admit the copy: what was checked is what will be served.

    An adapter whose registry entry pins a ``fingerprint`` (the content admitted at onboarding) is refused with
    ``adapter_changed`` when its folder no longer holds that content; nothing is copied then. Other refusals are
    ``admit``'s (run on the copy, against ``lora_config`` when given) and ``put``'s. Serve ``stored.path``, never the
    folder."""
    who = f"adapter '{adapter.name}'"
    folder = registry.adapter_path(adapter)
    pinned = adapter.fingerprint
    if pinned:
        _require_pin(who, folder, pinned, store.digest(folder, who=who, follow_symlinks=follow_symlinks,
                                                         inside=inside))
    stored = store.put(folder, who=who, follow_symlinks=follow_symlinks, inside=inside)
    if pinned:
        _require_pin(who, folder, pinned, stored.fingerprint)
    try:
        admission = admit(registry, adapter.model_copy(update={"path": stored.path}), max_lora_rank=max_lora_rank,
                          base=base, cache=cache, lora_config=lora_config)
    except AdapterError as exc:  # name the tenant's folder, not the copy, in the one line people read
        raise AdapterError(str(exc).replace(str(stored.path), str(folder)), code=exc.code) from None
    return stored, admission


def changed_error(who: str, folder: Path, pinned: str, actual: str) -> AdapterError:
    """The refusal for a folder whose content is no longer what was admitted."""
    return AdapterError(f"{who}: the files in {folder} changed after admission (admitted {_short(pinned)}, now "
                        f"{_short(actual)}); restore them, or offboard and onboard the adapter again to serve the new "
                        "files", code="adapter_changed")


def _require_pin(who: str, folder: Path, pinned: str, actual: str) -> None:
    if actual != pinned:
        raise changed_error(who, folder, pinned, actual)


def _short(value: str) -> str:
    return value.removeprefix(PREFIX)[:12]
