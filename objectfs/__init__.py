"""ObjectFS: mount an S3 bucket as a POSIX directory tree."""

__version__ = "0.1.0"
