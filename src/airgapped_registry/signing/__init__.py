"""The signing domain: the appliance's cosign keys, and signatures and attestations made
with them through the gateway (:mod:`.config`, :mod:`.keys`, :mod:`.signer`)."""
