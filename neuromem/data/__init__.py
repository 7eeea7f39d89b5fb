"""Dataset readers: pure listings (pandas rows, no bytes), payload loading, decoding.

See :mod:`neuromem.data.schema` for the columns.
"""

from neuromem.data.readers import DATASETS, list_rows, load_payloads

__all__ = ["DATASETS", "list_rows", "load_payloads"]
