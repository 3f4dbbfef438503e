"""Certificates are renewed by a schedule, or site.yml says loudly when they expire.

The lab schedules rotate-certs.yml on this machine (its cron, started by
scripts/bootstrap); a site that does not gets a warning with the first expiry at the
end of site.yml (playbooks/cert-expiry.yml, run here again).
"""

from __future__ import annotations

from pathlib import Path

WARNING = "No certificate rotation is scheduled"


def test_rotation_is_scheduled_or_the_first_expiry_is_a_warning(ansible_vars, playbook, lab):
    cron_file = Path(ansible_vars["internal_ca_rotation_cron_file"])
    output = playbook("playbooks/cert-expiry.yml")
    said = output.stdout + output.stderr
    if ansible_vars["internal_ca_rotation_cron"]:
        (job,) = [x for x in cron_file.read_text().splitlines() if x[:1].isdigit()]
        assert "playbooks/rotate-certs.yml" in job
        assert f"AIRGAP_LAB_PREFIX={lab['prefix']}" in job
        assert WARNING not in said
    else:
        assert not cron_file.exists()
        assert "[WARNING]" in said and WARNING in said
        assert "The first certificate expires on" in said
