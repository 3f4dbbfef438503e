"""``python -m airgapped_registry.cli``: the ``airgap`` command without its script."""

import sys

from airgapped_registry.cli import main

sys.exit(main())
