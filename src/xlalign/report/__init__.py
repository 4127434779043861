"""Our runs' tables in the papers' layouts (``tables``), figures (``figures``) and the summary report (``build``)."""
