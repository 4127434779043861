"""xlalign: reproduction library for batch-aligned multilingual preference tuning and CALM.

Notebooks in ``notebooks/`` call into these modules; nothing here depends on a notebook.
"""

__version__ = "0.1.0"
