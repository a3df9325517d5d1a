"""Curation stage: filters, secrets/PII, exact + near dedup, incremental ledger (``rayft curate``).

Pure modules (no Ray): config, reader, filters, secrets, dedup, assemble, output, ledger, synth, score.
Only ``run`` touches Ray.
"""
