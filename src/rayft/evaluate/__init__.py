"""Evaluation: pure metrics, the promotion gate, the training guard, and the Ray Data scorer.

``metrics``, ``gate`` and ``guard`` are pure (no Ray, no torch); ``scorer`` is the callable
class Ray Data runs as an actor pool; ``run`` is the only module here that touches Ray.
"""
