"""``python -m pertgrn.cli``: the ``pertgrn`` command."""

import sys

from pertgrn.cli import main

sys.exit(main())
