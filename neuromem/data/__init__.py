"""Dataset readers: pure listings (pandas rows, no bytes), Ray Datasets of payloads, decoding.

See :mod:`neuromem.data.schema` for the columns. Ray is imported only by
:func:`open_dataset`.
"""

from neuromem.data.readers import DATASETS, list_rows, open_dataset

__all__ = ["DATASETS", "list_rows", "open_dataset"]
