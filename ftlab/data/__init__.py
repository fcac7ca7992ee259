"""Training data: load text, tokenize it, pack it into fixed-size blocks, hold out validation (and optionally a
holdout split), and cache the result.

- ``_source``: where the text comes from (hub dataset or checked local files) and the fingerprint that names it.
- ``_documents``: reading the source into the documents of a train, a validation and (optionally) a holdout split.
- ``_blocks``: tokenizing the documents and packing them into blocks, the content of a cache entry.
- ``_cache``: :func:`prepare_data`, which builds an entry once and loads it from then on.

Problems with the user's data raise :class:`ftlab.errors.DataError` before any training starts. ``demo://`` names
are not understood here: ``load_sweep`` has already turned them into local paths.
"""

from ftlab.data._cache import PreparedData, data_fingerprint, prepare_data

__all__ = ["PreparedData", "data_fingerprint", "prepare_data"]
