"""``python -m exporter`` is ``tw-exporter``."""

import sys

from exporter.cli import main

sys.exit(main())
