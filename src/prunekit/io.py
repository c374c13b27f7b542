"""The one owner of persistence: atomic file and folder writes, the checkpoint manifest, checked reads.

Every prunekit output is a folder published whole (``atomic_dir``) with a ``manifest.json``
``{"format": "prunekit", "version": 2, "kind": ...}``. Replacing a folder is crash-safe: at every
instant ``out`` holds the old or the new complete folder, or a journal beside it lets ``recover``
finish the swap. Only names prunekit itself made are ever deleted:
``.{name}.prunekit-new-{pid}-{hex}``, ``.{name}.prunekit-old-{pid}-{hex}`` and ``.{name}.prunekit-swap.json``.

Fault injection (tests): ``PRUNEKIT_FAULT=<step>`` kills the process with SIGKILL at that step
(``FAULT_STEPS``); ``PRUNEKIT_SWAP=rename`` forces the journaled rename swap instead of the
atomic ``renameat2(RENAME_EXCHANGE)``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

log = logging.getLogger(__name__)

FORMAT = "prunekit"
VERSION = 2
KINDS = ("zoo", "masks", "structured", "hf", "training-state", "data-selection", "supermask", "sliced")
MANIFEST = "manifest.json"
MIB = 1 << 20
FAULT_STEPS = {
    "file-written": "a temporary file is written but not yet renamed (the new folder is half-written)",
    "after-write": "the new folder is complete beside out, nothing published yet",
    "after-journal": "the swap journal is written, out still holds the old folder (rename swap only)",
    "after-old-moved": "the old folder was moved aside, out is absent (rename swap only)",
    "after-new-moved": "the new folder is at out, the old copy still exists beside it",
    "mid-cleanup": "the old copy is partly deleted",
    "after-cleanup": "the old copy is deleted, the journal not yet (rename swap only)",
}


class OutputError(ValueError):
    """An output path that cannot be written as asked; the message names it and what to do."""


class NotWritableError(OutputError, PermissionError):
    """An output folder (or its nearest existing parent) that cannot be written."""


class OutputExistsError(OutputError, FileExistsError):
    """An output that exists and is not empty, given without ``overwrite``."""


def fault(step: str) -> None:
    """Kill this process with SIGKILL if ``PRUNEKIT_FAULT`` names ``step`` (crash tests only)."""
    if os.environ.get("PRUNEKIT_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- atomic files

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault("file-written")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def temp_file_beside(out: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new empty file ``.NAME.prunekit-tmp-*SUFFIX`` beside ``out`` (for writers that stream, e.g. memmaps)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.prunekit-tmp-", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def publish_file(tmp: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Move the complete file ``tmp`` (from :func:`temp_file_beside`) to ``out`` in one rename.

    An existing ``out`` is replaced only with ``overwrite``; else ``tmp`` is removed and nothing changes.
    """
    tmp, out = Path(tmp), Path(out)
    if out.exists() and not overwrite:
        remove_owned([tmp])
        raise OutputExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it, or choose "
                                "another path")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    os.replace(tmp, out)
    return out


def remove_owned(paths: Iterable[str | os.PathLike]) -> int:
    """Delete files this prunekit run wrote (temporary or superseded ones); missing ones are skipped.

    The one place outside folder replaces where prunekit deletes: callers pass only paths they created
    (resume state, superseded training-state tensors, their own temporary files). Folders are never removed
    here. Returns how many files were deleted.
    """
    n = 0
    for p in map(Path, paths):
        if p.is_file() or p.is_symlink():
            p.unlink()
            n += 1
    return n


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on an in-memory buffer, then write the bytes to ``path`` atomically."""
    buf = io.BytesIO()
    write(buf)
    return atomic_write_bytes(path, buf.getvalue())


def jsonable(v: Any) -> Any:
    """JSON form of what ``json`` cannot write itself: paths, numpy scalars/arrays and tensors (``tolist``)."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] = jsonable) -> Path:
    """Atomic JSON write, indented and key-sorted (``default`` converts what JSON cannot hold)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """A JSON object from ``path``; missing, corrupt or non-object files are errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); re-create it") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got a {type(obj).__name__}")
    return obj


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically (contiguous CPU copies)."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(flat, metadata=metadata))


def load_tensors(path: str | os.PathLike, what: str = "safetensors file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Load a safetensors file and its metadata; a missing or corrupt file is a clear error naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (expected a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{what} {path} is not a valid safetensors file ({e}); re-create it") from e
    return tensors, meta


# ---------------------------------------------------------------- checked reads

_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
           "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
Header = dict[str, tuple[tuple[int, ...], str]]


def dtype_code(dtype: torch.dtype | str) -> str:
    """The safetensors code of a torch dtype (``torch.bool`` -> ``"BOOL"``); a code passes through."""
    name = str(dtype).removeprefix("torch.")
    return _DTYPES.get(name, name.upper())


def tensor_header(path: str | os.PathLike, what: str = "safetensors file") -> tuple[Header, dict[str, str]]:
    """Names, shapes and dtypes of a safetensors file from its header only (no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (expected a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            head = {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype())) for k in f.keys()}
    except Exception as e:  # truncated or corrupt header
        raise ValueError(f"{what} {path} is not a valid safetensors file ({e}); re-create it") from e
    return head, meta


def check_tensor_file(path: str | os.PathLike,
                      expected: Mapping[str, tuple[Sequence[int] | None, torch.dtype | str | None]] | None = None,
                      max_numel: int | None = None, *, require_all: bool = True,
                      what: str = "safetensors file") -> Header:
    """Check a safetensors header against ``expected`` ``{name: (shape, dtype)}`` before any tensor is read.

    Unknown names, missing names (with ``require_all``), wrong shapes or dtypes (``None`` = any), and
    tensors of more than ``max_numel`` elements raise ``ValueError`` naming the file and the first bad tensor.
    """
    head, _ = tensor_header(path, what)
    for name, (shape, _dtype) in head.items():
        if max_numel is not None and math.prod(shape) > max_numel:
            raise ValueError(f"{what} {path}: tensor {name!r} has shape {list(shape)} "
                             f"({math.prod(shape)} elements), above the bound of {max_numel}")
    if expected is None:
        return head
    unknown = [k for k in head if k not in expected]
    if unknown:
        raise ValueError(f"{what} {path}: unknown tensor {unknown[0]!r} ({len(unknown)} unknown; expected names "
                         f"such as {sorted(expected)[:3]})")
    missing = [k for k in expected if k not in head]
    if require_all and missing:
        raise ValueError(f"{what} {path}: tensor {missing[0]!r} is missing ({len(missing)} missing)")
    for name, (shape, dtype) in expected.items():
        if name not in head:
            continue
        got_shape, got_dtype = head[name]
        if shape is not None and tuple(shape) != got_shape:
            raise ValueError(f"{what} {path}: tensor {name!r} has shape {list(got_shape)}, expected {list(shape)}")
        if dtype is not None and dtype_code(dtype) != got_dtype:
            raise ValueError(f"{what} {path}: tensor {name!r} has dtype {got_dtype}, expected {dtype_code(dtype)}")
    return head


def torch_load_safe(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``: never unpickles arbitrary objects."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- output checks

def _nearest_existing(path: Path) -> Path:
    return next((p for p in [path, *path.parents] if p.exists()), Path.cwd())


def is_read_only(path: str | os.PathLike) -> bool:
    """True if ``path`` cannot be written or carries no write bit at all (so root respects ``chmod a-w``)."""
    return not os.access(path, os.W_OK) or os.stat(path).st_mode & 0o222 == 0


def folder_writable(folder: str | os.PathLike) -> bool:
    """True if files can be created in the existing ``folder``: not read-only, and a real probe file works."""
    folder = Path(folder)
    return not is_read_only(folder) and os.access(folder, os.X_OK) and _probe(folder)


def _probe(folder: Path) -> bool:
    """True if a file can really be created and deleted in ``folder``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".prunekit-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def check_writable(path: str | os.PathLike, what: str = "--out") -> Path:
    """Raise ``NotWritableError`` before any work if ``path`` (or its nearest existing folder) cannot be written."""
    path = Path(path)
    target = path if path.is_dir() else _nearest_existing(path.parent)
    if path.exists() and not path.is_dir() and is_read_only(path):
        raise NotWritableError(f"{what} {path} is not writable (read-only?); check its permissions or choose "
                               "another path")
    if not folder_writable(target):
        raise NotWritableError(f"{what} {path}: folder {target} is not writable (read-only?); check its "
                               "permissions or choose another path")
    return path


def _is_nonempty(out: Path) -> bool:
    if out.is_symlink() or out.is_file():
        return True
    return out.is_dir() and any(out.iterdir())


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_out(out: str | os.PathLike, *, overwrite: bool, inputs: Sequence[str | os.PathLike] = (),
              expected_bytes: int = 0, what: str = "--out") -> Path:
    """Check an output folder before any work: not clobbering, not an input, writable, room enough.

    Finishes or rolls back an interrupted replace of ``out`` first (``recover``).
    """
    out = Path(out).expanduser()
    recover(out)
    real = out.resolve()
    for inp in inputs:
        src = Path(inp).expanduser().resolve()
        if real == src or (overwrite and _related(real, src)):
            raise OutputError(f"{what} {out} is, contains or lies inside the input {inp}; replacing it would "
                              "destroy the input: choose another output folder")
    if _is_nonempty(out) and not overwrite:
        kind = "is not empty" if out.is_dir() else "is a file"
        raise OutputExistsError(f"{what} {out} already exists and {kind}; pass --overwrite (overwrite=True) to "
                          "replace it, or choose another path")
    folder = _nearest_existing(out.parent)  # the new folder is written beside out
    if not folder_writable(folder):
        raise NotWritableError(f"{what} {out}: folder {folder} is not writable (read-only?); check its "
                               "permissions or choose another path")
    need = int(expected_bytes * 1.1) + MIB
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputError(f"{what} {out}: not enough free space in {folder}: {free} bytes free, {need} needed "
                          f"(expected output {expected_bytes} bytes + 10% + 1 MiB)")
    return out


def model_bytes(model: Any) -> int:
    """Bytes of a module's state dict as safetensors would store it (``expected_bytes`` for ``check_out``)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def folder_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under ``path`` (e.g. a source model folder, to size its pruned copy)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------- atomic folders

def _names(out: Path) -> tuple[str, str]:
    """Names of the new folder and of the old copy during a replace of ``out`` (this process, random tag)."""
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    return f".{out.name}.prunekit-new-{tag}", f".{out.name}.prunekit-old-{tag}"


def _journal(out: Path) -> Path:
    return out.parent / f".{out.name}.prunekit-swap.json"


def _pattern(out: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(out.name)}\.prunekit-(new|old)-(\d+)-[0-9a-f]{{8}}$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a folder (or file) prunekit made; ``mid-cleanup`` faults after the first file is gone."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    first = next((Path(r) / f for r, _, fs in os.walk(path) for f in fs), None)
    if first is not None:
        first.unlink()
        fault("mid-cleanup")
    shutil.rmtree(path)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    if os.environ.get("PRUNEKIT_SWAP") == "rename":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _write_journal(out: Path, new: Path, old_name: str) -> None:
    """Write the swap journal in place and fsync it (a torn journal means nothing was moved yet)."""
    doc = {"format": FORMAT, "swap": 1, "pid": os.getpid(), "new": new.name, "old": old_name}
    fd = os.open(_journal(out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(out.parent)


def _swap_journaled(new: Path, out: Path, old_name: str) -> None:
    """Replace ``out`` by ``new`` with two renames, a journal making every instant recoverable."""
    old = out.parent / old_name
    _write_journal(out, new, old_name)
    fault("after-journal")
    try:
        os.rename(out, old)
        fault("after-old-moved")
        os.rename(new, out)
    except BaseException:  # a rename failed (not a crash): put the old folder back now
        if old.exists() and not out.exists():
            os.rename(old, out)
        _journal(out).unlink(missing_ok=True)
        raise
    _fsync_dir(out.parent)
    fault("after-new-moved")
    _remove(old)
    fault("after-cleanup")
    _journal(out).unlink()


def _publish(new: Path, out: Path, overwrite: bool, old_name: str) -> None:
    """Move the complete folder ``new`` to ``out`` (replacing ``out`` only with ``overwrite``)."""
    if not out.is_symlink() and (not out.exists() or (out.is_dir() and not any(out.iterdir()))):
        os.rename(new, out)  # rename(2) replaces an empty folder atomically
        _fsync_dir(out.parent)
        return
    if not overwrite:
        raise OutputExistsError(f"{out} already exists and is not empty; pass --overwrite (overwrite=True) to "
                                "replace it, or choose another path")
    if _exchange(new, out):  # now ``new`` holds the old content
        _fsync_dir(out.parent)
        fault("after-new-moved")
        _remove(new)
        return
    _swap_journaled(new, out, old_name)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on clean exit publish it at ``out``, on error delete it.

    An existing non-empty ``out`` is replaced only with ``overwrite``, crash-safely (see the module doc).
    """
    out = Path(out).expanduser()
    recover(out)
    if _is_nonempty(out) and not overwrite:
        raise OutputExistsError(f"{out} already exists and is not empty; pass --overwrite (overwrite=True) to "
                                "replace it, or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    new_name, old_name = _names(out)
    new = out.parent / new_name
    new.mkdir()
    try:
        yield new
        _fsync_dir(new)
        fault("after-write")
        _publish(new, out, overwrite, old_name)
    except BaseException:
        if new.exists() or new.is_symlink():
            _remove(new)
        raise


def _recover_journal(out: Path) -> None:
    """Finish (new complete) or roll back an interrupted journaled swap of ``out``."""
    jpath = _journal(out)
    try:
        j = read_json(jpath, "swap journal")
    except ValueError:  # torn journal: it is written before any rename, so nothing was moved yet
        log.warning("removing unreadable swap journal %s (no folder had been moved yet)", jpath)
        jpath.unlink()
        return
    pat = _pattern(out)
    new_name, old_name = str(j.get("new", "")), str(j.get("old", ""))
    if not (pat.match(new_name) and pat.match(old_name)):
        raise OutputError(f"swap journal {jpath} names folders prunekit did not make ({new_name!r}, {old_name!r}); "
                          "inspect and remove it by hand")
    if isinstance(j.get("pid"), int) and j["pid"] != os.getpid() and _alive(j["pid"]):
        raise OutputError(f"{out} is being replaced by running process {j['pid']} (journal {jpath}); wait for it")
    new, old = out.parent / new_name, out.parent / old_name
    if not out.exists() and new.is_dir():
        os.rename(new, out)  # roll forward: the journal is written only once the new folder is complete
        log.warning("finished an interrupted replace of %s (the new folder is in place)", out)
    elif not out.exists() and old.exists():
        os.rename(old, out)
        log.warning("rolled back an interrupted replace of %s (the old folder is back)", out)
    elif out.exists() and new.is_dir():  # stopped before the first rename: do both now
        os.rename(out, old)
        os.rename(new, out)
        log.warning("finished an interrupted replace of %s (the new folder is in place)", out)
    if old.exists() or old.is_symlink():
        _remove(old)
    jpath.unlink()
    _fsync_dir(out.parent)


def recover(out: str | os.PathLike) -> list[Path]:
    """Finish or roll back an interrupted replace of ``out`` and delete stale temporary folders of dead runs.

    Returns the paths it removed. Only prunekit's own names are touched; legacy leftovers are logged.
    """
    out = Path(out).expanduser()
    parent = out.parent
    if not parent.is_dir():
        return []
    if _journal(out).exists():
        _recover_journal(out)
    removed = []
    pat = _pattern(out)
    for p in parent.iterdir():
        m = pat.match(p.name)
        if m and not _alive(int(m.group(2))):
            _remove(p)
            removed.append(p)
    if removed:
        log.warning("removed %d stale temporary folder(s) of interrupted prunekit runs beside %s: %s",
                    len(removed), out, ", ".join(p.name for p in removed))
    _warn_legacy(out)
    return removed


def settle(path: str | os.PathLike) -> None:
    """Before reading ``path``: finish or roll back an interrupted replace of it (a no-op without a swap journal).

    A reader that cannot write beside ``path`` (read-only medium) logs why and reads what is there.
    """
    path = Path(path).expanduser()
    if not _journal(path).exists():
        return
    try:
        recover(path)
    except OSError as e:
        log.warning("cannot finish the interrupted replace of %s (%s); reading what is there", path, e)


def _warn_legacy(out: Path) -> None:
    legacy = re.compile(rf"^\.{re.escape(out.name)}\.(old|old-.*|tmp-.*|[a-z0-9_]{{8}})$")
    found = [p.name for p in out.parent.iterdir() if legacy.match(p.name) and p.is_dir()]
    if found:
        log.warning("folders beside %s look like leftovers of an older prunekit (%s); they may hold a previous "
                    "copy of it, so prunekit leaves them: delete them by hand once checked", out, ", ".join(found))


# ---------------------------------------------------------------- manifests

def write_manifest(folder: str | os.PathLike, kind: str, body: Mapping[str, Any],
                   default: Callable[[Any], Any] = jsonable) -> Path:
    """Write ``folder/manifest.json`` ``{"format": "prunekit", "version": 2, "kind": kind, **body}`` atomically."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    clash = sorted({"format", "version", "kind"} & set(body))
    if clash:
        raise ValueError(f"manifest body may not set {clash}: write_manifest sets them")
    return write_json(Path(folder) / MANIFEST, {"format": FORMAT, "version": VERSION, "kind": kind, **body},
                      default=default)


def read_manifest(folder: str | os.PathLike, kinds: Sequence[str] | None = None,
                  what: str = "checkpoint") -> dict[str, Any]:
    """The manifest of a prunekit folder, validated (format, version, kind in ``kinds``).

    Folders of the version-1 layouts (zoo, training-state, hf, data-selection, structured) are read
    too and returned in the version-2 shape with ``"legacy": 1``.
    """
    folder = Path(folder)
    settle(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {folder} (expected a folder written by prunekit, "
                                f"holding {MANIFEST})")
    path = folder / MANIFEST
    man = read_json(path, f"{what} manifest") if path.is_file() else _legacy_manifest(folder, what)
    if man.get("format") != FORMAT and "legacy" not in man:
        man = _legacy_body(man, path) or man
    _validate_manifest(man, path, kinds)
    return man


def _validate_manifest(man: dict[str, Any], path: Path, kinds: Sequence[str] | None) -> None:
    if man.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prunekit manifest (format={man.get('format')!r}, expected {FORMAT!r})")
    if man.get("version") != VERSION:
        raise ValueError(f"{path} has version {man.get('version')!r}; this prunekit reads version {VERSION} "
                         "(and the version-1 layouts)")
    allowed = tuple(kinds) if kinds is not None else KINDS
    if man.get("kind") not in allowed:
        raise ValueError(f"{path} holds a {man.get('kind')!r} checkpoint; expected kind "
                         f"{' or '.join(map(repr, allowed))}")


_LEGACY_FILES = (("checkpoint.json", "training-state"), ("prunekit_manifest.json", "hf"), ("plan.json", "structured"))


def _legacy_manifest(folder: Path, what: str) -> dict[str, Any]:
    """A version-1 folder's manifest in the version-2 shape; a folder of none of them is an error."""
    for name, _kind in _LEGACY_FILES:
        p = folder / name
        if p.is_file():
            body = _legacy_body(read_json(p, f"{what} manifest"), p)
            if body is not None:
                return body
    raise FileNotFoundError(f"{what} {folder} has no {MANIFEST} (not a folder written by prunekit)")


def _legacy_body(old: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """Map a version-1 manifest to the version-2 shape (``None`` if it is none of them)."""
    fmt, ver = old.get("format"), old.get("version")
    if fmt == "prunekit.checkpoint" and ver == 1:
        kind = "training-state" if "tensors" in old else "zoo"
    elif fmt == "prunekit.llm-masks" and ver == 1:
        kind = "hf"
    elif old.get("type") == "prunekit.structured.plan":
        return {"format": FORMAT, "version": VERSION, "kind": "structured", "legacy": 1, "plan": path.name}
    elif fmt is None and ver == 1 and old.get("kind") == "data-selection":
        kind = "data-selection"
    else:
        return None
    rest = {k: v for k, v in old.items() if k not in ("format", "version", "kind")}
    return {**rest, "format": FORMAT, "version": VERSION, "kind": kind, "legacy": 1, "manifest_file": path.name}
