"""Curation stage: filters, secrets/PII, exact + near dedup, incremental ledger (``rayft curate``).

Pure modules (no Ray): config, reader, filters, secrets, dedup, assemble, output, ledger.
Test data and its scorer live in ``rayft.testing`` (``pairs``, ``curate_score``).
Only ``run`` touches Ray.
"""
