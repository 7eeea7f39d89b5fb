"""Commands of the ``neuromem`` CLI that are not Ray jobs."""
