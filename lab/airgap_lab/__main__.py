"""``python -m airgap_lab``: the ``airgap-lab`` command without its script."""

import sys

from airgap_lab.cli import main

sys.exit(main())
