"""CLIP features → ridge probes (himalaya) → ``clip-probe`` encoder files; zero-shot labels.

Modules: :mod:`.features` (CLIP features as the probe encoder computes them), :mod:`.ridge`
(per-target ridge CV), :mod:`.fit` (probe fitting and held-out R²), :mod:`.nsd_betas` (NSD
fsaverage betas and noise ceiling), :mod:`.zero_shot` (CLIP zero-shot categories and their
row model for the image-map engine).
"""
