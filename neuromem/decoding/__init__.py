"""Brain-to-image decoding: contrastive brain encoders and retrieval metrics (seed 003)."""
