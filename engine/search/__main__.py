"""``python -m engine.search --study NAME``: one search worker (see :mod:`engine.search.worker`)."""
import sys

from engine.search.worker import main

sys.exit(main())
