"""Diffusion backends: text-to-image models served to stages as shared models (``render(requests)``)."""
