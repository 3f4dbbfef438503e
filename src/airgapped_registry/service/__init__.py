"""The scan service: Distribution's notifications in, a persistent queue, workers that scan,
record verdicts, attest and sign, and a periodic reconciliation with the registry."""
