"""Audio in and directories out, once for the whole package: reading, finding and resampling audio files (the
embedding command, the training data, the simulator), and writing output directories without ever losing a
user's files (every command that writes a directory).

Reading (`read_audio`, `find_audio_files`, `check_audio`): regular files only (a named pipe would block), wav /
flac / ogg / mp3 through soundfile and `.npy` without pickle; samples checked finite after the cast to float32
and within a sane peak; resampled with the package's one resampler, `feature_extraction_gram.resample_audio`.

Writing output directories without ever losing a user's files:

Every command of the package that writes a directory (convert_checkpoint.py, export_onnx.py, embed_audio.py,
the simulator and the demo) writes it through `staged_directory`:

* the target is checked first: never the working directory or one of its parents, never a directory that
  contains one of the command's inputs, never a symbolic link, a file, or a directory holding anything a
  GRAM command did not write. Each output carries a marker (`.gram-output.json`) listing the files the
  command wrote, so a later `--overwrite` can tell its own output from a user's files;
* everything is written into a hidden staging directory beside the target, with the user's umask;
* the finished directory replaces the old one in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`;
  elsewhere two renames), so an interrupt at any moment leaves the old or the new directory complete;
* then the old output is removed file by file, only the files its marker lists; an error or Ctrl-C
  before that point removes the staging directory and leaves the old output untouched.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

OUTPUT_MARKER = ".gram-output.json"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Audio beyond this peak is not audio (float files hold [-1, 1]; PCM scaled as floats reaches 32768 or 2**31):
# its level normalisation would overflow float32 and poison a training run.
MAX_PEAK = 1e10


class BadAudioError(ValueError):
    """A file or record that cannot be used as audio; the message says why."""


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for regular files (and links to them); named pipes, devices and sockets would block or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def find_audio_files(
    folder: str | os.PathLike, extensions: Iterable[str] = AUDIO_EXTENSIONS, not_regular: list[Path] | None = None
) -> list[Path]:
    """Regular files with one of `extensions` (any case) under `folder`, recursively, sorted (so every process of
    a job sees the same order). Matching names that are not regular files (pipes, sockets...) are left out, and
    collected in `not_regular` when given."""
    extensions = tuple(e.lower() for e in extensions)
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in extensions and not path.is_dir():
            if is_regular_file(path):
                found.append(path)
            elif not_regular is not None:
                not_regular.append(path)
    return found


def check_audio(audio, name: str = "", sets: bool = False) -> np.ndarray:
    """Finite float32 `(channels, samples)` audio (with `sets`, also `(sources, channels, samples)`); raises
    `BadAudioError`. Checked after the cast to float32: a finite float64/longdouble can overflow to Inf in it."""
    prefix = f"{name}: " if name else ""
    if not isinstance(audio, np.ndarray):  # e.g. an .npz archive under an .npy name
        raise BadAudioError(f"{prefix}not a single array ({type(audio).__name__})")
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim not in ((2, 3) if sets else (2,)) or audio.size == 0:
        expected = "(samples,), (channels, samples)" + (" or (sources, channels, samples)" if sets else "")
        raise BadAudioError(f"{prefix}expected {expected} audio, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise BadAudioError(f"{prefix}expected floating-point samples, got {audio.dtype}")
    with np.errstate(over="ignore"):
        audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise BadAudioError(f"{prefix}contains NaN or Inf (in float32)")
    peak = float(np.abs(audio).max())
    if peak > MAX_PEAK:
        raise BadAudioError(f"{prefix}peak amplitude {peak:.3g} is not audio (expected floats in [-1, 1])")
    return audio


def resample(audio: np.ndarray, from_rate, to_rate: int, name: str = "") -> np.ndarray:
    """`feature_extraction_gram.resample_audio`, with a rate read from a file or record checked first."""
    from feature_extraction_gram import resample_audio

    if isinstance(from_rate, bool) or not isinstance(from_rate, (int, np.integer)) or not 1 <= from_rate <= 10_000_000:
        raise BadAudioError(f"{name + ': ' if name else ''}invalid sampling rate {from_rate!r}")
    return resample_audio(audio, int(from_rate), to_rate)


def read_audio(
    path: str | os.PathLike,
    sampling_rate: int,
    resample_other_rates: bool = True,
    sets: bool = False,
    name=None,
    channels: int | None = None,
) -> np.ndarray:
    """`(channels, samples)` float32 at `sampling_rate` from a wav/flac/ogg/mp3 file (soundfile) or an `.npy`
    array (read without pickle; already at `sampling_rate`; with `sets` also `(sources, channels, samples)`).
    With `channels`, only the first `channels` channels are kept, before resampling (which then costs less).
    Errors are `BadAudioError`s prefixed with `name` (default: the file name; "" for none)."""
    import soundfile

    path = Path(path)
    name = path.name if name is None else name
    prefix = f"{name}: " if name else ""
    if not is_regular_file(path):
        raise BadAudioError(f"{prefix}not a regular file")
    try:
        if path.suffix.lower() == ".npy":
            return check_audio(np.load(path, allow_pickle=False), name, sets)
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except BadAudioError:
        raise
    except Exception as error:  # soundfile/numpy raise many types for corrupt files
        raise BadAudioError(f"{prefix}unreadable ({type(error).__name__}: {error})") from error
    audio = check_audio(np.ascontiguousarray(data.T[:channels]), name)
    if rate != sampling_rate and not resample_other_rates:
        raise BadAudioError(f"{prefix}{rate} Hz, expected {sampling_rate} Hz (pass --resample)")
    return resample(audio, rate, sampling_rate, name)


class OutputDirectoryError(ValueError):
    """The output directory cannot be written safely; the message says why and what to do."""


def printable(text: str, limit: int = 2000) -> str:
    """`text` safe to print on a terminal: control characters (escape sequences from file names or checkpoint
    keys) shown escaped, and the length bounded."""
    # Newlines too: an error is one line, and a name from a file must not print a fake line after it.
    cleaned = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text)[: limit + 1])
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + " ..."


def _unreadable(error: OSError) -> None:
    # os.walk skips folders it cannot list; a folder we cannot see into is never treated as empty (or as ours)
    raise OutputDirectoryError(f"Cannot read {printable(error.filename or error, 300)}: it may hold files of yours.")


def _files_under(directory: Path) -> set[str]:
    """Relative paths of everything under `directory` that is not a directory (files, links, pipes...)."""
    found = set()
    for base, dirs, files in os.walk(directory, onerror=_unreadable):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            found.add(os.path.relpath(os.path.join(base, name), directory))
    return found


def _entries_under(directory: Path) -> set[str]:
    """`_files_under` plus the (real) folders: an empty folder of the user's is theirs too."""
    found = _files_under(directory)
    for base, dirs, _ in os.walk(directory, onerror=_unreadable):
        found.update(
            os.path.relpath(os.path.join(base, d), directory) for d in dirs if not os.path.islink(os.path.join(base, d))
        )
    return found


def _folders_of(files: Iterable[str]) -> set[str]:
    """Every folder that holds one of `files` (relative paths), at any depth."""
    folders = set()
    for name in files:
        parent = os.path.dirname(name)
        while parent:
            folders.add(parent)
            parent = os.path.dirname(parent)
    return folders


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker of a previous GRAM output in `directory`, or None when there is none or it is not one of
    ours (a marker is data from the directory, so it is read as untrusted: a regular file of bounded size
    whose entries are plain relative paths inside the directory)."""
    path = os.path.join(directory, OUTPUT_MARKER)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > 16 << 20:
            return None
        try:
            marker = json.loads(f.read())
        except (ValueError, RecursionError):  # malformed, or nested deeper than the parser's recursion limit
            return None
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, list) or not all(_is_plain_relative(name) for name in files):
        return None
    return marker


def _is_plain_relative(name) -> bool:
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split(os.sep))


def check_output_dir(
    output_dir: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    overwrite_flag: str | None = "--overwrite",
) -> Path:
    """The absolute output path, after refusing every target that could cost the user a file."""
    inputs = list(inputs)
    for name in (output_dir, *inputs):
        if "\0" in os.fspath(name):
            raise OutputDirectoryError(f"{printable(os.fspath(name), 200)} holds a NUL byte; no path can.")
    try:  # safetensors and the Hub need UTF-8 paths: refused now, not after the work
        os.fspath(os.path.abspath(output_dir)).encode("utf-8")
    except UnicodeEncodeError:
        raise OutputDirectoryError(
            f"{printable(os.fspath(output_dir), 200)} is not valid UTF-8; choose a UTF-8 name."
        ) from None
    path = Path(os.path.abspath(output_dir))
    if path.is_symlink():
        state = "a dangling symbolic link" if not path.exists() else "a symbolic link"
        raise OutputDirectoryError(f"{path} is {state}; give the path of a real (new) directory.")
    real = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents:
        raise OutputDirectoryError(f"{path} is the working directory or one of its parents; choose a new directory.")
    if real == Path(os.path.realpath(Path.home())):
        raise OutputDirectoryError(f"{path} is your home directory; choose a new directory.")
    for item in inputs:
        source, given = Path(os.path.realpath(item)), Path(os.path.abspath(item))
        # resolved (the file itself) and as given (a link to it inside the output would be deleted with it)
        if source == real or real in source.parents or given == path or path in given.parents:
            raise OutputDirectoryError(f"{path} contains the input {item}; choose an output directory elsewhere.")
    if path.exists() or os.path.lexists(path):
        if not path.is_dir():
            raise OutputDirectoryError(f"{path} exists and is not a directory.")
        existing = _entries_under(path)
        if existing:
            if not overwrite:
                hint = f"pass {overwrite_flag} to replace it" if overwrite_flag else "choose a new or empty directory"
                raise OutputDirectoryError(f"{path} exists and is not empty; {hint}.")
            marker = read_marker(path)
            if marker is None:
                raise OutputDirectoryError(
                    f"{path} holds files that no GRAM command wrote (it has no valid {OUTPUT_MARKER}); it is not replaced. "
                    "Choose another directory or move those files."
                )
            files = _files_under(path)
            listed = set(marker["files"])
            # files must be listed files; folders must hold listed files (a listed name that is a folder is not ours)
            foreign = sorted((files - listed - {OUTPUT_MARKER}) | (existing - files - _folders_of(listed & files)))
            if foreign:
                raise OutputDirectoryError(
                    f"{printable(path)} holds files the previous {printable(marker.get('tool', 'GRAM'), 40)} run did not write: "
                    f"{printable(', '.join(foreign[:5]), 400)}{' ...' if len(foreign) > 5 else ''}; move them first."
                )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputDirectoryError(f"Cannot create {path}: {parent} is not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK) and not path.parent.exists():
        raise OutputDirectoryError(f"Cannot create {path}: no permission to write in {parent}.")
    if path.parent.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputDirectoryError(f"Cannot write {path}: no permission to write in {path.parent}.")
    return path


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _remove_own_files(directory: Path, files: Iterable[str]) -> None:
    """Deletes the files of a retired output that its marker lists *and* that are really inside it (links are
    removed as links, never followed), then its empty folders; anything else stays."""
    present = _files_under(directory)
    removed = set(files) & present
    for name in sorted(removed | ({OUTPUT_MARKER} & present)):
        os.unlink(directory / name)
    # Only the folders that held listed files, deepest first, then the directory itself (if empty by now).
    for folder in sorted(_folders_of(removed), key=lambda name: -name.count(os.sep)):
        target = directory / folder
        if target.is_dir() and not target.is_symlink():
            try:
                os.rmdir(target)
            except OSError:
                pass
    try:
        os.rmdir(directory)
    except OSError:
        pass
    if directory.exists():
        logger.warning("Left %s in place: it holds files this command did not write.", directory)


def current_umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Holds SIGINT/SIGTERM while the output is swapped and the old one removed (delivered right after)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """`kill` cleans up like Ctrl-C does: SIGTERM raises SystemExit while the output is being written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def staged_directory(
    output_dir: str | os.PathLike,
    tool: str,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    overwrite_flag: str | None = "--overwrite",
) -> Iterator[Path]:
    """Yields a fresh staging directory; when the block completes, it becomes `output_dir` (see the module
    docstring for the guarantees). An exception or interrupt inside the block removes the staging directory."""
    inputs = list(inputs)
    path = check_output_dir(output_dir, inputs, overwrite, overwrite_flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.staging-"  # a plain prefix match: the name may hold glob characters
    stale = sorted(path.parent / name for name in os.listdir(path.parent) if name.startswith(prefix))
    if stale:  # left by a killed run (kill -9 cannot be cleaned up after); not deleted: say where they are
        logger.warning(
            "Found %d staging folder(s) of an interrupted earlier run, e.g. %s; delete them when no "
            "GRAM command is writing %s.",
            len(stale),
            printable(stale[0], 300),
            printable(path, 300),
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    swapped = False
    try:
        with _sigterm_as_exit():
            yield staging
            written = sorted(_files_under(staging) - {OUTPUT_MARKER})
            (staging / OUTPUT_MARKER).write_text(json.dumps({"tool": tool, "files": written}, indent=1) + "\n")
            mask = current_umask()
            for base, _, files in os.walk(staging):  # mkdtemp and some writers make private files
                os.chmod(base, 0o777 & ~mask)
                for name in files:
                    if not os.path.islink(os.path.join(base, name)):
                        os.chmod(os.path.join(base, name), 0o666 & ~mask)
            with _signals_blocked():
                check_output_dir(path, inputs, overwrite, overwrite_flag)  # nothing foreign appeared meanwhile
                old_files = (read_marker(path) or {"files": []})["files"] if path.is_dir() else None
                if old_files is None:
                    os.rename(staging, path)
                    swapped = True
                elif _exchange(staging, path):
                    swapped = True
                    _remove_own_files(staging, old_files)  # staging now holds the old output
                else:
                    retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.retired-", dir=path.parent))
                    os.rename(path, retired / "old")
                    os.rename(staging, path)
                    swapped = True
                    _remove_own_files(retired / "old", old_files)
                    os.rmdir(retired)
    except BaseException:
        if not swapped and staging.exists():
            _remove_tree_we_made(staging)
        raise


def _remove_tree_we_made(directory: Path) -> None:
    """Removes a staging directory this process created (everything in it was written by this process)."""
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
