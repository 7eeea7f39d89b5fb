"""Stable Diffusion steered by predicted brain responses: pipelines, guided sampling, blur, DRaFT."""
