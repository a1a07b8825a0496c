"""Typed errors. Library code raises these; only the CLI turns them into one line and an exit code."""

from __future__ import annotations


class AuditError(Exception):
    """Base class for every error a user can cause or fix. Exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class UsageError(AuditError):
    """The user asked for something that cannot work as given (bad path, bad file, bad flag)."""

    exit_code = 2


class ModelLoadError(UsageError):
    """A model or tokenizer could not be loaded from what the user pointed at."""


class ProbeSetError(UsageError):
    """A probe set is missing, empty or malformed."""


class CapabilityError(UsageError):
    """A detector needs something the backends or the reference panel cannot give."""


class ProbeTooLongError(UsageError):
    """A prompt does not fit in a model's context window."""


class ResultSchemaError(AuditError):
    """A result file cannot be read by this version of the tool."""


class InvalidAnswerError(AuditError):
    """A model's answer cannot be evidence: non-finite or impossible numbers, inconsistent shapes."""


class InvalidResultFileError(ResultSchemaError):
    """A result file the user gave is not one this version reads: not JSON, another major schema version, or
    not valid against the schema. A usage error, like any other malformed input file."""

    exit_code = 2
