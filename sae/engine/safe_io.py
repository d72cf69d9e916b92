"""Files that survive a kill, respect the umask, and never run code: the one place attnscope writes from.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_with`: a temporary file in the target's directory,
  fsync, `os.replace`. A symlink is written *through* (its target is replaced, the link stays); a target that is
  not a regular file (a directory, a device node, a FIFO) is refused. The new file gets the mode of the file it
  replaces, or `0o666 & ~umask` (never mkstemp's private 0600).
- `DirLock`: one writer per directory. A lock file holds `{pid, host, started, what}` under an `fcntl.flock`, so
  a lock of a killed process is free again at once (the kernel drops it); on systems without `flock` the pid is
  checked instead.
- `swap_dir`: replace the files a writer owns in a directory (an SAE) so that a kill at any point leaves the old
  or the new one loadable, carrying over every other entry (the user's README, plots): new copy in
  `.NAME.attnscope-tmp-PID-*`, old moved to `.NAME.attnscope-old-PID-*`, new renamed in, old renamed to
  `.NAME.attnscope-trash-PID-*` and deleted. `recover_dir` puts back an `-old-` copy when a dead process left the
  target missing; writers (not loads) then remove the leftovers of dead processes.
- `clean_stale_temps`: deletes attnscope's own `.*.attnscope-tmp-PID-*` (and -old-, -trash-) entries whose
  process is gone; a name without attnscope's tag is never touched.
- `read_text_file`: a regular file's text, refusing FIFOs, devices and huge files in one line.
- Nothing is written inside a protected root (the installed package, `protect`), through a symlink the user did
  not name (`follow_symlink=False`), or over a read-only (no owner write bit) file.
- `safe_torch_load`: `torch.load(weights_only=True)`; a pickle that would run code, a truncated or corrupt file,
  are one-line `UnsafeFileError`s.
- `check_writable_dir`: the output directory is probed *before* long work starts.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sae.engine.errors import AttnscopeError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".attnscope.lock"


class OutputError(AttnscopeError, OSError):
    """An output file or directory cannot be written (not a regular file, read-only, full disk, ...)."""

    def __init__(self, message: str) -> None:
        AttnscopeError.__init__(self, message)


class LockedError(AttnscopeError):
    """Another live process holds the directory's lock."""


class UnreadableFileError(AttnscopeError, ValueError):
    """A file attnscope reads is not a readable regular text file (a FIFO, a device, no permission, not UTF-8)."""


class UnsafeFileError(AttnscopeError, ValueError):
    """A torch file would run code when unpickled, or is truncated/corrupt; nothing in it was executed."""


# ---- modes --------------------------------------------------------------------------------------------------

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (/proc), else set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file: what `open()` would give (0o666 minus the umask)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new directory: what `mkdir` would give (0o777 minus the umask)."""
    return 0o777 & ~current_umask()


def os_error_line(exc: OSError) -> str:
    """A short reason for an OSError ('no space left on device', 'read-only file system', ...)."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno in (errno.EROFS,):
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


# errors of the user's environment (permissions, a full or read-only disk, a bad path), not of the program
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
                                errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENXIO,
                                errno.EFBIG})


def environment_error_line(exc: BaseException) -> str | None:
    """One line for an OSError the user's environment caused (a permission, a full disk, a read-only mount, a
    path too long), naming the file; None for any other exception (a bug keeps its traceback)."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot use{where}: {os_error_line(exc)}"


# ---- pids -------------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (permission errors count as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


# attnscope's own temporaries carry its name: `.NAME.attnscope-tmp-PID-...` (and -old-, -trash-). Nothing else is
# ever taken for one: a user's `.thesis.tmp-31337` or `.photos.old-2020/` is not ours and is never touched.
TEMP_TAG = "attnscope"
_TEMP_PID = re.compile(r"^\..+\.attnscope-(?:tmp|old|trash)-(\d+)(?:-.*)?$")


def temp_name(name: str, kind: str = "tmp") -> str:
    """The name of this process's temporary (`kind` tmp/old/trash) for the file or directory `name`."""
    return f".{name}.{TEMP_TAG}-{kind}-{os.getpid()}-{threading.get_ident()}"


def is_own_temp(name: str) -> bool:
    """Whether `name` is one of attnscope's temporaries (of any process)."""
    return _TEMP_PID.match(name) is not None


def _owner_pid(name: str) -> int | None:
    m = _TEMP_PID.match(name)
    return int(m.group(1)) if m else None


# ---- atomic files -----------------------------------------------------------------------------------------


def resolve_output(path: str | Path, follow_symlink: bool = True) -> tuple[Path, bool]:
    """Where a write to `path` must land (symlinks followed when the user named the link, `follow_symlink`) and
    whether a file is already there.

    Raises OutputError for a directory, device node, FIFO or socket, a read-only file (mode without the owner's
    write bit: refused, never replaced), a symlink the user did not name (`follow_symlink=False`), a place inside
    a protected root (the installed package), and a missing parent directory."""
    p = Path(path).expanduser()
    if not follow_symlink and p.is_symlink():
        raise OutputError(f"{p} is a symbolic link attnscope did not make; refusing to write through it")
    real = Path(os.path.realpath(p))
    if is_protected(real):
        raise OutputError(f"{p} is inside attnscope's installed files, which are read-only; write elsewhere")
    if real.exists() or real.is_symlink():
        import stat

        try:
            st = os.stat(real)
        except OSError as exc:
            raise OutputError(f"cannot write {p}: {os_error_line(exc)}") from None
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{p} is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{p} is not a regular file (a device, FIFO or socket); refusing to replace it")
        if not st.st_mode & stat.S_IWUSR:
            raise OutputError(f"{p} is read-only (mode {stat.S_IMODE(st.st_mode):o}); refusing to replace it")
        return real, True
    if not real.parent.is_dir():
        raise OutputError(f"cannot write {p}: the folder {real.parent} does not exist")
    return real, False


def atomic_write_with(path: str | Path, write: Callable[[Path], None], fsync: bool = True,
                      follow_symlink: bool = True) -> bool:
    """Call `write(tmp_path)` then rename the temporary file over `path`; True when a file was replaced.

    The result has the replaced file's mode, or the umask's default; a symlink the user named is written through
    (`follow_symlink=False` for a name the program chose: a link there is refused); a read-only file is refused;
    errors (full disk, read-only place) are one-line `OutputError`s and leave the old file untouched."""
    real, existed = resolve_output(path, follow_symlink=follow_symlink)
    mode = (os.stat(real).st_mode & 0o7777) if existed else file_mode()
    tmp = real.with_name(temp_name(real.name))
    try:
        write(tmp)
        os.chmod(tmp, mode)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, real)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {os_error_line(exc)}") from exc
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return existed


class _RecordingWriter:
    """A binary file for `torch.save` that keeps the OSError of a failed write (torch reports it as a RuntimeError
    about stream positions, which names no cause)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_torch(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` into `path`; a write that fails (a full disk, an I/O error) is the `OSError` the OS gave,
    not torch's RuntimeError (`unexpected pos ...`), so every writer's one-line `OutputError` covers it. Used
    inside `atomic_write_with`."""
    import torch

    with open(path, "wb") as fh:
        writer = _RecordingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError as exc:
            if writer.error is None:
                raise
            raise writer.error from exc


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, whose I/O failures (a full disk, a read-only place) are a `SafetensorError`
    rather than an `OSError`: raised here as the `OSError` they are (errno kept), so every writer's one-line
    `OutputError` covers them as any other write's. Used inside `atomic_write_with` / `swap_dir`."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        m = re.search(r"os error (\d+)", str(exc))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def atomic_write_bytes(path: str | Path, data: bytes, follow_symlink: bool = True) -> bool:
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:
            fh.write(data)

    return atomic_write_with(path, write, follow_symlink=follow_symlink)


def atomic_write_text(path: str | Path, text: str, follow_symlink: bool = True) -> bool:
    """Write `text` (UTF-8) atomically; True when an existing file was replaced."""
    return atomic_write_bytes(path, text.encode("utf-8"), follow_symlink=follow_symlink)


# ---- reading user files ------------------------------------------------------------------------------------

MAX_TEXT_BYTES = 256 * 2**20


def read_file_bytes(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a regular file; `FileNotFoundError` passes through, anything else that is not a readable regular
    file of at most `max_bytes` (a FIFO that would hang, /dev/zero, a directory, a permission error) is one-line
    `UnreadableFileError`."""
    import stat

    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnreadableFileError(f"cannot read {what} {p}: {os_error_line(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableFileError(f"{what} {p} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFileError(f"{what} {p} is not a regular file (a device, FIFO or socket)")
    if st.st_size > max_bytes:
        raise UnreadableFileError(f"{what} {p} is too large ({st.st_size:,} bytes; at most {max_bytes:,})")
    try:
        with open(p, "rb") as fh:
            return fh.read(max_bytes + 1)
    except OSError as exc:
        raise UnreadableFileError(f"cannot read {what} {p}: {os_error_line(exc)}") from None


def read_text_file(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file (`read_file_bytes`); bytes that are not UTF-8 are `UnreadableFileError`."""
    data = read_file_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(f"{what} {Path(path).expanduser()} is not UTF-8 text (byte {exc.start})") from None


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- writable output directories ---------------------------------------------------------------------------


def _probe(d: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=f".probe-{os.getpid()}-", dir=d)
    os.close(fd)
    os.unlink(name)


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create `path` if needed and prove a file can be written in it; OutputError (one line) otherwise.

    Called before long work starts, so a bad `--out` or cache dir fails in a second, not after an hour."""
    p = Path(path).expanduser()
    if is_protected(p):
        raise OutputError(f"{what} {p} is inside attnscope's installed files, which are read-only; write elsewhere")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        _probe(p)
    except FileExistsError:
        raise OutputError(f"{what} {p}: a part of that path is a file") from None
    except NotADirectoryError:
        raise OutputError(f"{what} {p}: a part of that path is a file") from None
    except OSError as exc:
        raise OutputError(f"{what} {p} is not writable ({os_error_line(exc)})") from None
    return p


# ---- locks ------------------------------------------------------------------------------------------------


class DirLock:
    """An exclusive lock on a directory (or on one file, via `lock_path`), held by this process.

    `DirLock(d, what="training").acquire()` raises LockedError at once when another live process holds it;
    `acquire(timeout=s)` waits up to `s` seconds. Released on `release()`, on exit of a `with` block, or by the
    kernel when the process dies. Not re-entrant."""

    def __init__(self, directory: str | Path, what: str = "writing", lock_path: str | Path | None = None) -> None:
        self.directory = Path(directory)
        self.path = Path(lock_path) if lock_path is not None else self.directory / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refusal(self) -> LockedError:
        info = self.holder()
        who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
        since = f" since {info['started']}" if info.get("started") else ""
        doing = f" ({info['what']})" if info.get("what") else ""
        return LockedError(f"{self.directory} is in use by {who}{doing}{since}; wait for it to finish or pick another place")

    def acquire(self, timeout: float = 0.0) -> DirLock:
        if is_protected(self.path):
            raise OutputError(f"{self.directory} is inside attnscope's installed files, which are read-only")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot lock {self.directory}: {os_error_line(exc)}") from None
        deadline = time.monotonic() + timeout
        while True:
            if self._try_acquire():
                return self
            if time.monotonic() >= deadline:
                raise self._refusal()
            time.sleep(0.02)

    def _try_acquire(self) -> bool:
        if fcntl is None:  # pragma: no cover - no flock: O_EXCL file + pid check
            return self._try_acquire_excl()
        try:
            # never through a link: truncating "the lock" must not empty a file it points to
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), file_mode())
        except OSError as exc:
            raise OutputError(f"cannot lock {self.directory}: {os_error_line(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "what": self.what}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return True

    def _try_acquire_excl(self) -> bool:  # pragma: no cover - used only where fcntl is missing
        info = self.holder()
        if info and info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", 0))):
            self.path.unlink(missing_ok=True)  # stale: its process is gone
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, file_mode())
        except FileExistsError:
            return False
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "what": self.what}).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is None:  # pragma: no cover
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)  # the file stays: unlinking a flock'd file lets two processes hold "the" lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- temporaries of dead processes -------------------------------------------------------------------------


def clean_stale_temps(directory: str | Path, prefix: str = "") -> list[Path]:
    """Remove attnscope's own temporaries (`.{prefix}*.attnscope-tmp-PID-*` / `-old-` / `-trash-`) in `directory`
    whose process is gone. Nothing else is ever removed: a user's `.draft.tmp-1234` is not ours.

    An `-old-` directory is removed only when the directory it was moved away from exists again (else
    `recover_dir` restores it). Called by writers only (a read-only command removes nothing). Returns what was
    removed; errors (read-only place) are ignored."""
    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith("." + prefix):
            continue
        pid = _owner_pid(p.name)
        if pid is None or pid_alive(pid):
            continue
        if f".{TEMP_TAG}-old-" in p.name:
            base = p.name[1:].split(f".{TEMP_TAG}-old-")[0]
            if not (d / base).exists():
                continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# ---- directory swap ---------------------------------------------------------------------------------------


def _dead_olds(target: Path) -> list[Path]:
    parent = target.parent
    try:
        return [p for p in parent.glob(f".{glob_escape(target.name)}.{TEMP_TAG}-old-*")
                if p.is_dir() and (pid := _owner_pid(p.name)) is not None and not pid_alive(pid)]
    except OSError:
        return []


def recover_dir(target: str | Path, clean: bool = True) -> bool:
    """After a crash: if `target` is missing but a dead attnscope process left its complete previous copy
    (`.NAME.attnscope-old-PID-*`) beside it, rename it back (the user's SAE is whole again, nothing deleted);
    with `clean` (writers only) then remove that name's stale temporaries. True when something was restored."""
    target = Path(target)
    parent = target.parent
    restored = False
    try:
        if not target.exists() and parent.is_dir():
            olds = _dead_olds(target)
            if olds:
                newest = max(olds, key=lambda p: p.stat().st_mtime)
                os.replace(newest, target)
                fsync_dir(parent)
                restored = True
    except OSError:
        return False
    if clean:
        clean_stale_temps(parent, prefix=target.name + ".")
    return restored


def recover_children(root: str | Path, clean: bool = False) -> None:
    """`recover_dir` for every directory a dead attnscope process left half-swapped directly under `root`."""
    root = Path(root)
    try:
        names = {p.name[1:].split(f".{TEMP_TAG}-old-")[0] for p in root.glob(f".*.{TEMP_TAG}-old-*")}
    except OSError:
        return
    for name in names:
        recover_dir(root / name, clean=clean)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _carry_over(old: Path, new: Path, owned: frozenset[str] | None) -> None:
    """Hard-link (or copy) into `new` every entry of `old` that the write did not produce and that is not one of
    the writer's own file names (`owned`): the user's README, notes and plots stay in a swapped directory."""
    for entry in old.iterdir():
        if (new / entry.name).exists() or (owned is not None and entry.name in owned) or is_own_temp(entry.name):
            continue
        dest = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dest)
        elif entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(dest))


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def swap_dir(target: str | Path, write: Callable[[Path], None], owned: Iterable[str] | None = None,
             keep_foreign: bool = True, allow_protected: bool = False) -> Path:
    """Fill a fresh directory with `write(tmp_dir)` and put it at `target`, replacing the files it owns.

    `owned` names the files this writer makes (an SAE: cfg.json, weights, sparsity); every other entry already in
    `target` (the user's README.md, plots/, notes) is carried into the new copy (hard links), so a swap never
    loses a file it did not write (`keep_foreign=False` replaces the directory whole: the package's own files).
    A kill at any point leaves `target` whole (old or new) or, between the two renames, missing with the
    complete old copy at `.NAME.attnscope-old-PID-*`, which `recover_dir` puts back. Directory and files get
    the umask's modes. OutputError (one line) when the place is not writable, protected, or the disk is full."""
    target = Path(target)
    parent = target.parent
    if not allow_protected and is_protected(target):
        raise OutputError(f"{target} is inside attnscope's installed files, which are read-only; write elsewhere")
    if target.is_symlink():
        raise OutputError(f"{target} is a symbolic link; refusing to replace the directory it points to")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {parent}: {os_error_line(exc)}") from None
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory")
    recover_dir(target)
    tag = f"{os.getpid()}-{threading.get_ident()}"
    old = parent / f".{target.name}.{TEMP_TAG}-old-{tag}"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{TEMP_TAG}-tmp-{tag}-", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write into {parent}: {os_error_line(exc)}") from None
    try:
        os.chmod(tmp, dir_mode())
        write(tmp)
        fmode = file_mode()
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, fmode)
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if target.exists():
            if keep_foreign:
                _carry_over(target, tmp, frozenset(owned) if owned is not None else None)
            os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(parent)
            trash = parent / f".{target.name}.{TEMP_TAG}-trash-{tag}"
            os.replace(old, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
            fsync_dir(parent)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {os_error_line(exc)}") from exc
    finally:
        if not target.exists() and old.exists():  # failed between the renames: put the old copy back
            os.replace(old, target)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---- read-only places ---------------------------------------------------------------------------------------

# directories the program never writes into (the package's shipped files); `sae.zoo` registers its own
READ_ONLY_ROOTS: list[Path] = []


def protect(root: str | Path) -> None:
    """Make `root` and everything under it read-only to attnscope's writers (`save_sae`, `eval --write`)."""
    p = Path(root).expanduser().resolve()
    if p not in READ_ONLY_ROOTS:
        READ_ONLY_ROOTS.append(p)


def is_protected(path: str | Path) -> bool:
    """Whether `path` lies inside a root passed to `protect`."""
    p = Path(path).expanduser().resolve()
    return any(p == r or r in p.parents for r in READ_ONLY_ROOTS)


# ---- torch files ------------------------------------------------------------------------------------------


def safe_torch_load(path: str | Path, what: str = "file") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors, numbers, strings and containers only. A file
    that needs any other class (a pickle that would run code) or is truncated/corrupt raises UnsafeFileError
    with one line; FileNotFoundError passes through."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(p))
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        if "Weights only load failed" in first or "Unsupported" in str(exc):
            raise UnsafeFileError(
                f"{what} {p} holds objects other than tensors (refused: loading it could run code)"
            ) from None
        raise UnsafeFileError(f"{what} {p} is corrupted ({first[:100]})") from None
    except MemoryError:
        raise UnsafeFileError(f"{what} {p} is corrupted (it claims more memory than this machine has)") from None
    except Exception as exc:  # noqa: BLE001 - zip, zlib, struct, storage errors of a damaged file: all one line
        raise UnsafeFileError(f"{what} {p} is truncated or corrupted ({type(exc).__name__})") from None
