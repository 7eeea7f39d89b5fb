"""The Ray layer of the library: every ``ray`` import of neuromem lives in this package.

- :mod:`.session`: the one way to start, join and shut down Ray (:func:`~.session.ray_session`).
- :mod:`.image_map`: the one image-map engine (rows naming images → a model on an actor pool →
  rows or Parquet parts, bad images isolated in an errors table).
- :mod:`.train`: Ray Train wiring shared by the training jobs.
- :mod:`.progress`: progress made inside Ray tasks and workers, relayed to the driver's bar.
- one module per job (``score``, ``annotate`` for ``assess`` and ``label-categories``, ``layers``,
  ``train_memnet``, ``decode`` ...): its typed config and the function ``pipelines/`` calls.

The science those jobs run lives in the other packages and is tested without Ray.
"""
