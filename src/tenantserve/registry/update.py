"""The one way to change the registry file: lock, load, apply one change, re-validate, write atomically.

Every writer (the sidecar's admin API, ``tenantserve keys``, ``fingerprint --pin``) calls ``update_registry``:

1. take ``RegistryLock`` (a ``flock`` beside the file), so two writers in any processes never lose a change;
2. read and validate the file as it is now (an operator may have edited it);
3. apply ``change`` to the pydantic models (it raises to abort: nothing is written);
4. re-validate the whole registry (list appends bypass pydantic's assignment checks);
5. render the new text keeping the operator's comments, key order and quoting (``render``) and write it atomically
   (temp file, fsync, rename, fsync of the directory);
6. translate an ``OSError`` once: ``RegistryWriteError`` (``registry_unwritable``; ``registry_locked`` when another
   writer holds the lock too long), HTTP 503 at the sidecar, exit 2 at the CLI.

Why a write costs about the same at 10 or 1,000 tenants (BENCHMARKS.md, "Registry writes"): the file is parsed once,
by libyaml (``yamlpos``); ``render`` rewrites only the sections and tenants that changed (``yamlkeep.splice_text``),
each through a ruamel round trip of its own few lines (the whole-file round trip is only the fallback); and the new
text is checked by parsing just those regions when they are self-contained, else by parsing it all. What stays
linear is validating the registry, before and after the change, and checking the result. A text is used only if
it provably loads to exactly the new registry; otherwise the file is written as plain YAML.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from tenantserve.errors import Reason, RegistryError
from tenantserve.registry.schema import Registry, RegistryLock, atomic_write_text, read_registry_text
from tenantserve.registry.yamlkeep import Spliced, merge_text, splice_text
from tenantserve.registry.yamlpos import YamlDocument

T = TypeVar("T")

#: Seconds a writer waits for another writer's lock before giving up with ``registry_locked``.
LOCK_TIMEOUT = 30.0


class RegistryWriteError(RegistryError):
    """The registry cannot be written: a read-only mount (a ConfigMap), a full disk, no permission to create the
    lock file (``registry_unwritable``), or another writer held the lock past the timeout (``registry_locked``).
    Nothing was changed."""

    code = Reason.REGISTRY_UNWRITABLE
    exit_code = 2
    http_status = 503


@dataclass(frozen=True)
class LoadedRegistry:
    """One version of the file: its text, its parse (node tree with lines) and the registry it validates to."""

    path: Path
    text: str
    document: YamlDocument
    registry: Registry

    @classmethod
    def read(cls, path: Path) -> LoadedRegistry:
        """Read and validate ``path`` (model paths need not exist). ``RegistryError`` names the file and line."""
        text = read_registry_text(path)
        document = YamlDocument.parse(text, source=str(path), error=RegistryError)
        registry = Registry.from_document(document, source=str(path), root=path.parent)
        registry._source = path.resolve()
        return cls(path, text, document, registry)


def update_registry(path: Path | str, change: Callable[[Registry], T], *,
                    edit_text: Callable[[str], str | None] | None = None,
                    on_read: Callable[[Registry | None, RegistryError | None], None] | None = None,
                    lock_timeout: float = LOCK_TIMEOUT) -> T:
    """Apply ``change`` to the registry at ``path`` and write the result; returns what ``change`` returned.

    ``change`` edits the models in place (it may raise any error to abort: the file is untouched). ``edit_text``,
    optional, proposes the new text itself from the old (``fingerprint --pin`` adds a comment); it is used only when
    it means exactly the changed registry. ``on_read`` sees each read of the file (the registry, or the error), so a
    caller can keep its last good registry. Blocking (file lock, fsync): async callers run it in a thread.

    Raises ``RegistryError`` for a file that does not load or a change that makes it invalid, and
    ``RegistryWriteError`` when it cannot be written or locked.
    """
    path = Path(path)
    try:
        lock = RegistryLock(path, timeout=lock_timeout).acquire()
    except RegistryError as exc:
        raise RegistryWriteError(exc.message, code=exc.code) from None
    try:
        with _collector_paused():
            return _update_locked(path, change, edit_text, on_read)
    finally:
        lock.release()


def _update_locked(path: Path, change: Callable[[Registry], T], edit_text: Callable[[str], str | None] | None,
                   on_read: Callable[[Registry | None, RegistryError | None], None] | None) -> T:
    try:
        loaded = LoadedRegistry.read(path)
    except RegistryError as exc:
        if on_read is not None:
            on_read(None, exc)
        raise
    if on_read is not None:
        on_read(loaded.registry, None)
    before = loaded.registry.model_dump(mode="json", exclude_none=True)
    result = change(loaded.registry)
    new = validated(loaded.registry)
    text = render(new, loaded, before, edit_text=edit_text)
    try:
        atomic_write_text(path, text, follow_symlink=True)
    except OSError as exc:
        raise RegistryWriteError(f"cannot write the registry {path}: {exc.strerror or exc}; nothing changed",
                                 code=Reason.REGISTRY_UNWRITABLE) from None
    return result


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection during one update. A parse allocates an object per YAML node and pydantic more
    per model; each time the allocations pass the collector's threshold it scans every object the process holds,
    which in a CLI that has imported torch and vLLM cost more than the update itself (about half the CPU time of a
    write at 1,000 tenants). The update makes no cycles worth collecting; refcounting frees its objects as usual,
    and the collector runs again right after."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def validated(registry: Registry) -> Registry:
    """Re-run every registry rule on an in-memory change (list appends bypass pydantic's assignment checks)."""
    try:
        fresh = Registry.model_validate(registry.model_dump())
    except ValidationError as exc:
        msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise RegistryError(f"the change would make the registry invalid: {msg}") from None
    fresh._root = registry.root
    fresh._source = registry.source
    return fresh


def render(registry: Registry, old: LoadedRegistry | None = None, before: dict[str, Any] | None = None, *,
           old_text: str | None = None, edit_text: Callable[[str], str | None] | None = None) -> str:
    """The text to write for ``registry``, as close to the old file as provably correct. Pure.

    Tried in order, each kept only if it loads to exactly ``registry``: ``edit_text`` of the old text; the old text
    with only the changed regions rewritten (needs ``old`` and ``before``, the old registry's
    ``model_dump(mode="json", exclude_none=True)``); the whole old text round-tripped through ruamel (``old_text``
    or ``old.text``); plain YAML (comments lost, never data). The check parses the whole candidate, except for a
    splice whose regions are self-contained (``Spliced.data``): then only those regions were parsed, and the
    data they make up is validated."""
    full = registry.model_dump(mode="json", exclude_none=True)
    minimal = registry.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    text = old.text if old is not None else old_text
    candidates: list[Callable[[], str | Spliced | None]] = []
    if text is not None:
        if edit_text is not None:
            candidates.append(lambda: edit_text(text))
        if old is not None and before is not None:
            candidates.append(lambda: splice_text(old.document, text, before, full, minimal))
        candidates.append(lambda: merge_text(text, full, minimal))
    for candidate in candidates:
        try:
            proposed = candidate()
        except Exception:  # an editor that cannot place the change: the next one tries
            continue
        if isinstance(proposed, Spliced):
            if proposed.data is not None and holds(proposed.data, full):
                return proposed.text
            proposed = proposed.text
        if proposed is not None and means(proposed, full):
            return proposed
    return registry.to_yaml()


def means(text: str, full: dict[str, Any]) -> bool:
    """Whether ``text`` loads (duplicate keys refused, every rule checked) to exactly the registry dumped as ``full``."""
    try:
        return Registry.parse(text).model_dump(mode="json", exclude_none=True) == full
    except RegistryError:
        return False


def holds(data: Any, full: dict[str, Any]) -> bool:
    """Whether YAML ``data`` validates (every rule) to exactly the registry dumped as ``full``."""
    try:
        return Registry.model_validate(data).model_dump(mode="json", exclude_none=True) == full
    except ValidationError:
        return False
