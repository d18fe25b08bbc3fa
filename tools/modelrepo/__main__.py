"""`python -m tools.modelrepo`: see tools/modelrepo/__init__.py."""

import sys

from tools.modelrepo.cli import main

sys.exit(main())
