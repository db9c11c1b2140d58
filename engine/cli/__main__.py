"""``python -m engine.cli`` runs the ``tnstudio`` command line."""
import sys

from engine.cli import main

sys.exit(main())
