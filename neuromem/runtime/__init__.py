"""What every job needs besides its science, without Ray: storage, config, device, provenance, progress.

========================  =====================================================================
module                    job
========================  =====================================================================
``storage``               files and Parquet parts at local paths or any pyarrow URI, atomic writes,
                          JSON safety
``config``                :class:`~neuromem.runtime.config.JobConfig`, the typed config of a job
``device``                ``--device`` / ``--dtype`` resolution
``provenance``            versions, command line and time that outputs record
``progress``              progress bars and stage timing
``throughput``            steady-state throughput from per-batch times
========================  =====================================================================

The Ray side (session, image-map engine, Train/Tune wiring) lives in :mod:`neuromem.jobs`.
"""
