"""`python -m embeddings_client` (console script `embeddings`): the command-line client."""

from __future__ import annotations

import sys

from embeddings_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
