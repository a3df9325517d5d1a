"""Ray Tune sweeps over the `rayft train` loop (see sweep.py)."""
