"""Errors the pipeline raises for bad input: the CLI prints them as one line and exits 2."""


class PipelineError(Exception):
    """A stage cannot run with what it was given (missing experiment, impossible resources, ...)."""


class ConfigError(PipelineError):
    """A configuration field is unknown or has a value it does not allow."""

    def __str__(self) -> str:
        return f"config error: {super().__str__()}"


class SearchFailed(Exception):
    """Every trial of a search failed (not a user error: the reasons are printed with it)."""


class SearchInterrupted(Exception):
    """The search stopped early on request (Ctrl+C); its state is saved for ``--resume``."""


def error_reason(error: BaseException | str) -> str:
    """The last line of an error or a traceback: Ray wraps a trial's exception in the remote one."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
