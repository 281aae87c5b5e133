"""User-facing errors. The core raises these; only the CLI boundary turns them into exit codes.

Exit codes (documented in the README):

====  =====================================================================
0     success
1     internal error (a bug: the traceback is shown)
2     usage error: a bad option value or combination
3     data error: a dataset or input image is missing or unreadable
4     artifact error: unknown run, missing or corrupt checkpoint, manifest mismatch
5     the artifact store cannot be written
6     a quality gate failed (``compare --fail-below``)
130   interrupted (Ctrl-C / SIGTERM); a training run is kept as ``interrupted``
====  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_ARTIFACT = 4
EXIT_STORE = 5
EXIT_GATE = 6
EXIT_INTERRUPTED = 130


class CnnvizError(Exception):
    """An error the user can act on: ``message`` says what is wrong, ``hint`` how to fix it."""

    exit_code = EXIT_BUG

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class UsageError(CnnvizError):
    """A bad option value or combination."""

    exit_code = EXIT_USAGE


class DataError(CnnvizError):
    """A dataset or an input image cannot be found or read."""

    exit_code = EXIT_DATA


class ArtifactError(CnnvizError):
    """A run, checkpoint or manifest is missing, invalid or inconsistent."""

    exit_code = EXIT_ARTIFACT


class StoreWriteError(CnnvizError):
    """The artifact store cannot be written."""

    exit_code = EXIT_STORE


class GateFailed(CnnvizError):
    """A quality gate such as ``compare --fail-below`` was not met."""

    exit_code = EXIT_GATE


class Interrupted(CnnvizError):
    """The user interrupted a command; what was finished has been kept."""

    exit_code = EXIT_INTERRUPTED


class CnnvizWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as a warning)."""


def damaged_safetensors(path, exc: Exception, hint: str = "It is corrupt or truncated.") -> ArtifactError:
    """safetensors' own error for a damaged file, said in words (not its internal error class)."""
    text = str(exc).lower()
    short = any(word in text for word in ("incomplete", "not fully covered", "too small", "unexpected end"))
    reason = "it is cut short" if short else "its header or tensor data cannot be read"
    return ArtifactError(f"{path} is not a valid safetensors file: {reason}.", hint)


def reason_of(exc: BaseException | str, limit: int = 200) -> str:
    """What an exception (or the text it carries) says, as one line of words for a message: its own first
    line, never its class name (``KeyError``, ``UnidentifiedImageError`` mean nothing to a user); an error
    without text is named in words."""
    text = str(exc).strip()
    if not text:
        return "out of memory" if isinstance(exc, MemoryError) else "an error that gave no message"
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
