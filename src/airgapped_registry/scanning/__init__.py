"""The scanning domain: Trivy scans of served digests, their verdicts by policy, the DB."""
