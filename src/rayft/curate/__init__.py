"""Curation stage: filters, secrets/PII, exact + near dedup, incremental ledger (``rayft curate``).

Pure modules (no Ray): config, filters, secrets, dedup, assemble, output, ledger (files are read by
``rayft.data``: formats, reader, ray_read).
Test data and its scorer live in ``rayft.testing`` (``pairs``, ``curate_score``).
Only ``run`` touches Ray.
"""
