"""Writing a file a user named (a template, an export, a report, a list of ids): the
one helper every writer uses.

Only a regular file is written, whole or not at all (a temporary file beside it,
renamed over it), with the mode any new file of the user gets (0666 less the umask),
or the mode and owner the file had. A device, FIFO, socket or directory is refused,
and so is a symbolic link unless the caller asks to write to the link's target: run as
root, a rename over `/dev/null` or over a link would replace what the path names."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from mailbag.broker.errors import ConfigurationError


class OutputPathError(ConfigurationError):
    """The path to write names something other than a regular file (or its folder is
    missing, or the write failed); nothing was written."""


def write_file(path: str | os.PathLike[str], data: str | bytes, *, follow_symlinks: bool = False) -> Path:
    """Write `data` (text as UTF-8) to the regular file at `path`, creating it or
    replacing it whole. A symbolic link is written through to its target only with
    `follow_symlinks`. Returns the path written; raises `OutputPathError` saying why not."""
    target = _regular_target(Path(path), follow_symlinks)
    try:
        existing: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        existing = None
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if existing is None:
                os.fchmod(fh.fileno(), 0o666 & ~_umask())
            else:
                os.fchmod(fh.fileno(), stat.S_IMODE(existing.st_mode))
                if os.geteuid() == 0:  # the user's file stays theirs
                    os.fchown(fh.fileno(), existing.st_uid, existing.st_gid)
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, target)
    except BaseException as exc:
        os.unlink(temporary)
        if isinstance(exc, OSError):
            raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return target


def _regular_target(path: Path, follow_symlinks: bool) -> Path:
    """The file to replace: `path`, or the target of the link it is when following."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise OutputPathError(f"cannot write {path}: folder {path.parent} does not exist") from None
        return path
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(found.st_mode):
        if not follow_symlinks:
            raise OutputPathError(
                f"{path} is a symbolic link (to {os.readlink(path)}): not written through unless asked "
                "(--follow-symlinks)"
            )
        return _regular_target(Path(os.path.realpath(path)), follow_symlinks=False)
    if stat.S_ISDIR(found.st_mode):
        raise OutputPathError(f"{path} is a directory; name a file in it")
    if not stat.S_ISREG(found.st_mode):
        raise OutputPathError(
            f"{path} is a {_kind(found.st_mode)}, not a regular file; name a file (or - for standard output)"
        )
    return path


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
