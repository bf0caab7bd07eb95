"""Data for Baton's tasks: one module per modality, the resumable sampler, embedded samples."""


class DataError(Exception):
    """Bad input data; the message is one sentence that says what to fix."""
