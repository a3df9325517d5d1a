"""Serving: an OpenAI-compatible Ray Serve app hosting registry champions (see app.py)."""
