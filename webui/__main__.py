"""``python -m webui`` is the ``inglenook`` command."""

import sys

from webui.cli import main

sys.exit(main())
