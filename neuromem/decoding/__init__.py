"""Brain-to-image decoding: contrastive brain encoders and retrieval metrics."""
