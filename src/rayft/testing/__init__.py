"""Fixtures for rayft's tests and benchmarks: synthetic data with planted truth and the scorers
that check a stage's output against it. The product never imports this package.

* ``pairs``: messy en + zh pair files in every input format with planted problems (curate);
* ``curate_score``: precision/recall of a curate output against ``pairs``' truth;
* ``frames``: episodes of synthetic frames with recurring characters, plus bad files;
* ``embeddings``: CLIP-like embeddings with planted clusters;
* ``runs``: small finished ``rayft train`` run directories made without Ray Train.
"""
