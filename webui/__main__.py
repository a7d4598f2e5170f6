"""``python -m webui`` is the ``inglenook`` command."""

import sys

from webui.cli.main import main

sys.exit(main())
