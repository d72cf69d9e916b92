"""Files that survive a kill, respect the umask, and never run code: the one place attnscope writes from.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_with`: a temporary file in the target's directory,
  fsync, `os.replace`. A symlink is written *through* (its target is replaced, the link stays); a target that is
  not a regular file (a directory, a device node, a FIFO) is refused. The new file gets the mode of the file it
  replaces, or `0o666 & ~umask` (never mkstemp's private 0600).
- `DirLock`: one writer per directory. A lock file holds `{pid, host, started, what}` under an `fcntl.flock`, so
  a lock of a killed process is free again at once (the kernel drops it); on systems without `flock` the pid is
  checked instead.
- `swap_dir`: replace a whole directory (an SAE) so that a kill at any point leaves the old or the new one
  loadable: new copy in `.NAME.tmp-PID-*`, old moved to `.NAME.old-PID-*`, new renamed in, old renamed to
  `.NAME.trash-PID-*` and deleted. `recover_dir` (called by every load and save) puts back an `.old` copy when a
  dead process left the target missing, and removes the leftovers of dead processes.
- `clean_stale_temps`: deletes `.*.tmp-PID-*` files and directories whose process is gone.
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
from collections.abc import Callable
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


_TEMP_PID = re.compile(r"^\..+\.(?:tmp|old|trash)-(\d+)(?:-.*)?$")


def _owner_pid(name: str) -> int | None:
    m = _TEMP_PID.match(name)
    return int(m.group(1)) if m else None


# ---- atomic files -----------------------------------------------------------------------------------------


def resolve_output(path: str | Path) -> tuple[Path, bool]:
    """Where a write to `path` must land (symlinks followed) and whether a file is already there.

    Raises OutputError for a directory, device node, FIFO or socket, and for a missing parent directory."""
    p = Path(path).expanduser()
    real = Path(os.path.realpath(p))
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
        return real, True
    if not real.parent.is_dir():
        raise OutputError(f"cannot write {p}: the folder {real.parent} does not exist")
    return real, False


def atomic_write_with(path: str | Path, write: Callable[[Path], None], fsync: bool = True) -> bool:
    """Call `write(tmp_path)` then rename the temporary file over `path`; True when a file was replaced.

    The result has the replaced file's mode, or the umask's default; symlinks are written through; errors
    (full disk, read-only place) are one-line `OutputError`s and leave the old file untouched."""
    real, existed = resolve_output(path)
    mode = (os.stat(real).st_mode & 0o7777) if existed else file_mode()
    tmp = real.with_name(f".{real.name}.tmp-{os.getpid()}-{threading.get_ident()}")
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


def atomic_write_bytes(path: str | Path, data: bytes) -> bool:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, write)


def atomic_write_text(path: str | Path, text: str) -> bool:
    """Write `text` (UTF-8) atomically; True when an existing file was replaced."""
    return atomic_write_bytes(path, text.encode("utf-8"))


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
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
    """Remove `.{prefix}*.tmp-PID-*` / `.old-` / `.trash-` entries in `directory` whose process is gone.

    An `.old-PID-*` directory is removed only when the directory it was moved away from exists again (else
    `recover_dir` restores it). Returns what was removed; errors (read-only place) are ignored."""
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
        if ".old-" in p.name:
            base = p.name[1:].split(".old-")[0]
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

def recover_dir(target: str | Path) -> bool:
    """After a crash: if `target` is missing but a dead process left `.NAME.old-PID-*` (the complete previous
    copy) beside it, rename it back; then remove stale temporaries. True when something was restored."""
    target = Path(target)
    parent = target.parent
    restored = False
    try:
        if not target.exists() and parent.is_dir():
            olds = [p for p in parent.glob(f".{glob_escape(target.name)}.old-*")
                    if p.is_dir() and (pid := _owner_pid(p.name)) is not None and not pid_alive(pid)]
            if olds:
                newest = max(olds, key=lambda p: p.stat().st_mtime)
                os.replace(newest, target)
                fsync_dir(parent)
                restored = True
    except OSError:
        return False
    clean_stale_temps(parent, prefix=target.name + ".")
    return restored


def recover_children(root: str | Path) -> None:
    """`recover_dir` for every directory a dead process left half-swapped directly under `root`."""
    root = Path(root)
    try:
        names = {p.name[1:].split(".old-")[0] for p in root.glob(".*.old-*")}
    except OSError:
        return
    for name in names:
        recover_dir(root / name)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def swap_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a fresh directory with `write(tmp_dir)` and put it at `target`, replacing what was there.

    A kill at any point leaves `target` whole (old or new) or, between the two renames, missing with the
    complete old copy at `.NAME.old-PID-*`, which `recover_dir` puts back. Directory and files get the umask's
    modes. OutputError (one line) when the place is not writable or the disk is full."""
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {parent}: {os_error_line(exc)}") from None
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory")
    recover_dir(target)
    tag = f"{os.getpid()}-{threading.get_ident()}"
    old = parent / f".{target.name}.old-{tag}"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{tag}-", dir=parent))
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
            os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(parent)
            trash = parent / f".{target.name}.trash-{tag}"
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
