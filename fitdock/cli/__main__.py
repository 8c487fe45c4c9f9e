"""``python -m fitdock.cli``: the same as the ``fitdock`` command."""

import sys

from fitdock.cli import main

sys.exit(main())
