"""File output in one place: the check made before long work starts, atomic writes, OSError as one line.

Every output of geomprobe goes through three steps:

1. :func:`check_output_file` / :func:`check_output_folder`, before any long work: refuse a path of
   the wrong kind, an existing output without ``overwrite``, a missing or read-only parent folder.
2. Writing under a temporary sibling name, renamed into place when complete (:func:`atomic_file`,
   :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`write_json`,
   :func:`atomic_folder`): a crash never leaves a half-written output under the final name, and an
   existing output stays untouched until its replacement is complete.
3. An ``OSError`` while writing (disk full, read-only file system, permission denied) becomes a
   one-line :class:`GeomprobeError` naming the path and the fix (:func:`write_error`), and the
   temporary file or folder is removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError

RETRY = "try again"
PathLike = str | os.PathLike[str]


# -- checks before long work ----------------------------------------------------------------------
def _check_parent(path: Path, what: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise GeomprobeError(f"folder {str(parent)!r} for {what} {path.name!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GeomprobeError(f"folder {str(parent)!r} for {what} {path.name!r} is not writable; choose another folder")


def check_output_file(path: PathLike, *, overwrite: bool, what: str = "output", example_name: str | None = None) -> Path:
    """Refuse a file output that cannot or must not be written; return it as a ``Path``.

    ``what`` names the output in messages (``"output"``, ``"--json"``); ``example_name`` is
    suggested when ``path`` is a folder (``give a file name such as path/example_name``).
    """
    path = Path(path)
    if path.is_dir():
        such_as = f" such as {path / example_name}" if example_name else ""
        raise GeomprobeError(f"{what} {str(path)!r} is a directory; give a file name{such_as}")
    if path.exists() and not path.is_file():  # a rename onto /dev/null or a FIFO would replace the node itself
        raise GeomprobeError(f"{what} {str(path)!r} is a device, pipe or socket, not a file; give a file name")
    if path.exists() and not overwrite:
        raise GeomprobeError(f"{what} {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    _check_parent(path, what)
    return path


def _owned_names(owns: Sequence[str], folder: Path) -> list[str]:
    """Names in ``folder`` matching ``owns`` that hold something (an empty folder has nothing to lose)."""
    if not owns or not folder.is_dir():
        return []

    def holds_something(entry: Path) -> bool:
        return not entry.is_dir() or entry.is_symlink() or any(entry.iterdir())

    return sorted(p.name for p in folder.iterdir() if any(fnmatch(p.name, pattern) for pattern in owns) and holds_something(p))


def check_output_folder(
    folder: PathLike, *, overwrite: bool, what: str = "output", holds: str | None = None, owns: Sequence[str] = ()
) -> Path:
    """Refuse a folder output that cannot or must not be written; return it as a ``Path``.

    ``holds`` names the file that marks a folder as already holding a ``what`` (e.g.
    ``probe.json``): such a folder is refused without ``overwrite``. ``owns`` names the files
    (glob patterns allowed) written into the folder: any of them already there is refused without
    ``overwrite`` (an empty folder under such a name excepted); other files are left alone.
    With neither the folder is written whole, so any non-empty folder is refused.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GeomprobeError(f"{what} output {str(folder)!r} is a file; give a folder name")
    if not overwrite:
        if holds is not None and (folder / holds).exists():
            raise GeomprobeError(f"{str(folder)!r} already holds a {what}; pass --overwrite (overwrite=True) to replace it")
        present = _owned_names(owns, folder)
        if present:
            raise GeomprobeError(
                f"{what} folder {str(folder)!r} already holds {present[0]}, which this command writes; "
                "pass --overwrite (overwrite=True) to replace it or choose another folder"
            )
        if holds is None and not owns and folder.is_dir() and any(folder.iterdir()):
            raise GeomprobeError(
                f"{what} output {str(folder)!r} exists and is not empty; "
                "pass --overwrite (overwrite=True) or choose another folder"
            )
    _check_parent(folder, what)
    return folder


def check_new_file(path: PathLike | None, what: str, *, overwrite: bool = False) -> None:
    """Check an optional side output (``--json``, ``--plot``): like :func:`check_output_file`,
    so an existing file is refused unless ``overwrite``; ``None`` (not asked for) passes."""
    if path is not None:
        check_output_file(path, overwrite=overwrite, what=what)


# Formats matplotlib writes (Pillow, a matplotlib dependency, covers jpg and tif).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff")


@dataclass(frozen=True)
class Output:
    """One output of a command, for :func:`check_outputs`.

    ``kind`` is ``"file"`` or ``"folder"``. A file may be limited to ``suffixes`` (".png", ...).
    A folder may name the file that marks it as already holding this output (``holds``) and the
    files (glob patterns allowed) the command writes into it (``owns``): those are refused when
    present without ``overwrite``, other files in the folder are left alone. A folder with
    neither is written whole, so any non-empty folder is refused.
    """

    path: PathLike | None
    flag: str
    kind: str = "file"
    suffixes: tuple[str, ...] = ()
    holds: str | None = None
    owns: tuple[str, ...] = ()
    example_name: str | None = None
    what: str = ""  # how messages name a folder output ("probe"); the flag by default


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(path))


def _check_one(output: Output, overwrite: bool) -> Path:
    if output.kind == "folder":
        return check_output_folder(
            output.path,  # type: ignore[arg-type]
            overwrite=overwrite,
            what=output.what or output.flag,
            holds=output.holds,
            owns=output.owns,
        )
    path = check_output_file(
        output.path,  # type: ignore[arg-type]
        overwrite=overwrite,
        what=output.flag,
        example_name=output.example_name,
    )
    if output.suffixes and path.suffix.lower() not in output.suffixes:  # "" in suffixes: no extension is fine
        raise GeomprobeError(
            f"{output.flag} {str(path)!r} has {'no extension' if not path.suffix else 'extension ' + repr(path.suffix)}; "
            f"use one of {', '.join(s for s in output.suffixes if s)}"
        )
    return path


def _writes_over(folder: Output, path: Path) -> bool:
    """Whether writing the folder output ``folder`` would replace ``path`` (a real path)."""
    root = _real(folder.path)  # type: ignore[arg-type]
    if folder.kind != "folder" or (root != path and root not in path.parents):
        return False
    if not (folder.owns or folder.holds):
        return True  # written whole: anything inside it is replaced
    if root == path:
        return False  # another artefact in the same folder: only the owned names are replaced
    first = path.relative_to(root).parts[0]
    return any(fnmatch(first, pattern) for pattern in (*folder.owns, folder.holds or ""))


def _collides(a: Output, b: Output) -> bool:
    """Whether writing ``a`` and ``b`` would touch the same file."""
    pa, pb = _real(a.path), _real(b.path)  # type: ignore[arg-type]
    return pa == pb or _writes_over(a, pb) or _writes_over(b, pa)


def check_outputs(outputs: Sequence[Output], *, inputs: Sequence[PathLike | None] = (), overwrite: bool) -> list[Path | None]:
    """Check all outputs of one command together, before any long work; return their paths (None where not asked for).

    Outputs must be distinct from each other (``--json x --plot x`` would overwrite one with the
    other, as would a file inside a folder output that the folder writes) and from every input (an
    output that replaces what the command reads, or an existing file inside an input folder), even
    with ``overwrite``. Then each is checked as by :func:`check_output_file` /
    :func:`check_output_folder`, plus its extension and the files it owns in a folder.
    """
    given = [o for o in outputs if o.path is not None]
    for output in given:
        if not str(output.path).strip():  # "" would become "." (the current folder)
            raise GeomprobeError(f"{output.flag} {str(output.path)!r} names no file or folder; give a path")
    for i, first in enumerate(given):
        for second in given[i + 1 :]:
            if _collides(first, second):
                raise GeomprobeError(
                    f"{first.flag} {str(first.path)!r} and {second.flag} {str(second.path)!r} would write the same file; "
                    "give each output its own path"
                )
    sources = [(_real(p), str(p)) for p in inputs if p is not None and str(p) != ""]
    for output in given:
        target = _real(output.path)  # type: ignore[arg-type]
        for source, shown in sources:
            inside_input = source in target.parents and os.path.lexists(target)  # e.g. --json MODEL/config.json
            if source == target or inside_input or _writes_over(output, source):
                raise GeomprobeError(
                    f"{output.flag} {str(output.path)!r} would overwrite the input {shown!r}; choose another output path"
                )
    checked = {id(o): _check_one(o, overwrite) for o in given}
    return [checked.get(id(o)) for o in outputs]


def check_free_space(folder: PathLike, needed_bytes: int, path: PathLike, retry: str = RETRY) -> None:
    """Refuse to start a write of about ``needed_bytes`` into ``folder`` when the disk cannot hold it.

    HDF5 handles a full disk badly (errors from destructors, a crash at exit), so writers that
    go through h5py check first and report :func:`write_error` about ``path`` instead.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell; the write itself will report any problem
    if free < needed_bytes:
        raise write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, retry)


# -- reading files whose content decides something --------------------------------------------------
def check_regular_file(path: PathLike, what: str = "input") -> Path:
    """Refuse a path that is not a regular file (after links): a device such as /dev/zero, a FIFO
    or a socket never ends or blocks, so reading or hashing it would hang."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise GeomprobeError(
            f"{what} {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); check the path"
        ) from None
    if stat.S_ISDIR(mode):
        raise GeomprobeError(f"{what} {str(path)!r} is a directory; pass a file")
    if not stat.S_ISREG(mode):
        raise GeomprobeError(f"{what} {str(path)!r} is a device, pipe or socket, not a regular file; pass a file")
    return path


def file_sha256(path: PathLike, *, what: str = "input", chunk: int = 1 << 22) -> str:
    """SHA-256 of a regular file's whole content, read in chunks (memory stays flat for large weights)."""
    path = check_regular_file(path, what)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise GeomprobeError(
            f"{what} {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); check the file"
        ) from None
    return digest.hexdigest()


def folder_sha256(folder: PathLike, *, what: str = "folder") -> str:
    """SHA-256 over every file under ``folder``: relative names, sizes and whole contents.

    Cache keys and resume decisions use it, so two folders that differ anywhere (not only in the
    first bytes of a file) never share a key. Devices, pipes and sockets inside are refused.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        name = path.relative_to(folder).as_posix().encode()
        file_digest = file_sha256(path, what=f"{what} file")
        digest.update(len(name).to_bytes(8, "little") + name + bytes.fromhex(file_digest))
    return digest.hexdigest()


# -- OSError as one line --------------------------------------------------------------------------
def _errno_of(exc: OSError) -> int | None:
    if exc.errno:
        return exc.errno
    # h5py reports C-level failures with the errno only inside the message text.
    text = str(exc)
    found = re.search(r"errno\s*=\s*(\d+)", text)
    if found:
        return int(found.group(1))
    if "No space left" in text:
        return errno.ENOSPC
    return None


def write_error(exc: OSError, path: PathLike, retry: str = RETRY) -> GeomprobeError:
    """One line naming ``path``, what went wrong and the fix; ``retry`` says how to carry on after it."""
    where = repr(str(path))
    code = _errno_of(exc)
    if code == errno.ENOSPC:
        return GeomprobeError(f"disk full while writing {where}; free some space and {retry}")
    if code == getattr(errno, "EDQUOT", -1):
        return GeomprobeError(f"disk quota exceeded while writing {where}; free some space and {retry}")
    if code == errno.EROFS:
        return GeomprobeError(
            f"cannot write {where} (read-only file system); make it writable or choose another folder, and {retry}"
        )
    if code in (errno.EACCES, errno.EPERM):
        return GeomprobeError(f"cannot write {where} (permission denied); fix the folder's permissions and {retry}")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return GeomprobeError(f"cannot write {where} ({reason}); fix the cause and {retry}")


def _os_error_inside(exc: BaseException) -> OSError | None:
    """The OS error a library reports in its own exception type: safetensors raises
    ``SafetensorError("... No space left on device (os error 28)")`` for a full disk."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


@contextmanager
def translate_write_errors(path: PathLike, retry: str = RETRY) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block (or a library error wrapping one) into
    :func:`write_error` about ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, path, retry) from None
    except GeomprobeError:
        raise
    except Exception as exc:
        wrapped = _os_error_inside(exc)
        if wrapped is None:
            raise
        raise write_error(wrapped, path, retry) from None


def remove_quietly(path: Path) -> None:
    """Delete a temporary file or folder; a failure here must not hide the error being reported."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


# -- atomic files -----------------------------------------------------------------------------------
def temp_sibling(path: PathLike, tag: str = "tmp") -> Path:
    """The hidden name ``path`` is written under until complete: ``.NAME.tag`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}")


def publish(temp: PathLike, path: PathLike, retry: str = RETRY) -> Path:
    """Rename a complete ``temp`` onto ``path`` (atomic on one file system); remove ``temp`` on failure."""
    temp, path = Path(temp), Path(path)
    try:
        os.replace(temp, path)
    except OSError as exc:
        remove_quietly(temp)
        raise write_error(exc, path, retry) from None
    return path


@contextmanager
def atomic_file(path: PathLike, *, temp: PathLike | None = None, retry: str = RETRY) -> Iterator[Path]:
    """Yield a temporary sibling to write ``path`` into; it replaces ``path`` when the block succeeds.

    On any failure the temporary is removed and ``path`` (if it existed) is left as it was; an
    ``OSError`` becomes a one-line :class:`GeomprobeError` about ``path``.

    >>> with atomic_file("out.png") as tmp:
    ...     fig.savefig(tmp, format="png")
    """
    path = Path(path)
    temp = Path(temp) if temp is not None else temp_sibling(path)
    remove_quietly(temp)  # left by a run that was killed
    try:
        with translate_write_errors(path, retry):
            yield temp
    except BaseException:
        remove_quietly(temp)
        raise
    publish(temp, path, retry)


def atomic_write_bytes(path: PathLike, data: bytes, *, retry: str = RETRY) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    with atomic_file(path, retry=retry) as temp:
        temp.write_bytes(data)
    return path


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8", retry: str = RETRY) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    with atomic_file(path, retry=retry) as temp:
        temp.write_text(text, encoding=encoding)
    return path


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def write_json(path: PathLike, payload: Any) -> Path:
    """Write JSON atomically (never a half-written file under the final name); NaN becomes null."""
    path = check_output_file(path, overwrite=True, what="JSON output")
    return atomic_write_text(path, json.dumps(_jsonable(payload), indent=2) + "\n")


# -- atomic folders ---------------------------------------------------------------------------------
@contextmanager
def removed_if_failed(folder: PathLike) -> Iterator[Path]:
    """Delete ``folder`` when the block fails, if it did not exist before the block.

    For artefact folders (a probe, a vector) whose files are each written atomically: a failure
    after the folder was made would otherwise leave an empty or half-filled new folder behind.
    """
    folder = Path(folder)
    existed = os.path.lexists(folder)
    try:
        yield folder
    except BaseException:
        if not existed:
            remove_quietly(folder)
        raise


def _swap_in(staging: Path, folder: Path) -> None:
    """Move ``staging`` to ``folder``; an existing ``folder`` is set aside first and restored on failure."""
    aside = None
    if folder.exists():
        aside = folder.with_name(f".{folder.name}.old-{secrets.token_hex(4)}")
        os.rename(folder, aside)
    try:
        os.rename(staging, folder)
    except OSError:
        if aside is not None:
            os.rename(aside, folder)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_folder(folder: PathLike, *, overwrite: bool, what: str = "output", retry: str = RETRY) -> Iterator[Path]:
    """Yield a fresh hidden sibling folder to build ``folder`` in; it replaces ``folder`` when the block succeeds.

    ``folder`` is checked as by :func:`check_output_folder` (a non-empty one needs ``overwrite``).
    On any failure the staging folder is removed and an existing ``folder`` is left as it was;
    an ``OSError`` becomes a one-line :class:`GeomprobeError` about ``folder``.
    """
    folder = check_output_folder(folder, overwrite=overwrite, what=what)
    shown = folder
    folder = Path(os.path.abspath(folder))  # "." and "out/.." have no name to build a sibling from
    here = Path(os.path.abspath(os.getcwd()))
    if folder == here or folder in here.parents:
        raise GeomprobeError(f"{what} output {str(shown)!r} is the current folder or holds it; give a new folder name")
    with translate_write_errors(shown, retry):
        # mkdir (unlike mkdtemp) honours the umask, so the published folder gets normal permissions.
        while True:
            staging = folder.with_name(f".{folder.name}.partial-{secrets.token_hex(4)}")
            try:
                staging.mkdir()
                break
            except FileExistsError:
                continue
    try:
        with translate_write_errors(shown, retry):
            yield staging
            _swap_in(staging, folder)
    finally:
        remove_quietly(staging)
