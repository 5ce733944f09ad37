"""Errors meant for people: one line that names the thing, the value and what was expected."""


class SamMed2DError(Exception):
    """Base of every error the suite raises on purpose; front ends show its message as is."""


class CheckpointError(SamMed2DError):
    """A weights file is missing, corrupt, unsafe or of another architecture."""


class PromptError(SamMed2DError, ValueError):
    """Points, boxes or masks that cannot be used on the image they were given for."""


class ImageError(SamMed2DError, ValueError):
    """An image or volume of the wrong shape, type or content."""


class VolumeIOError(SamMed2DError):
    """A file that cannot be read or written as a volume or image."""


class NothingToWrite(VolumeIOError):
    """A label file that cannot hold empty labels (a DICOM SEG needs a segment) was asked
    for labels with no object in them."""


class Cancelled(SamMed2DError):
    """Raised inside long work when the caller asked it to stop."""


class SourceWarning(UserWarning):
    """Something about the input that the output had to work around; the CLI prints it as
    one line."""
