"""Errors the task layer raises: each names the file, field or setting that is wrong."""


class DatasetError(Exception):
    """A dataset source, Parquet file or manifest is missing, corrupt or foreign."""


class EpisodeError(ValueError):
    """An episode setting the split cannot satisfy (ways > classes, shots + query > images)."""
