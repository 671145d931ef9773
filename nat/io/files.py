"""Files written atomically: a crash or a kill leaves the old file or the new one, never half."""

from __future__ import annotations

import errno
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "jsonable",
    "markdown_table",
    "mean_std",
    "save_figure",
    "write_json",
]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file of the same folder, fsync it,
    then rename it over ``path``: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                err.errno,
                f"no space left on the disk of {path.parent} while writing {path.name}: free "
                "some, or write elsewhere",
            ) from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars and arrays as Python numbers and lists,
    and dict keys as strings: what :func:`json.dumps` takes."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy, without importing it
        return value.tolist()
    return value


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population standard deviation) of ``values``; the deviation of one value is 0."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table, one line per row, ending with a newline."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write ``data`` (made :func:`jsonable`) as indented JSON."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out a matplotlib ``Figure`` (made without pyplot, so no backend or display is
    involved) and write it atomically as a PNG (110 dpi)."""
    import io

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
