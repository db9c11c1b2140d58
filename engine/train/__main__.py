"""``python -m engine.train --run ID [--runs-dir D] [--resume]``: train a run recorded in the run store."""
import sys

from engine.train.loop import main

sys.exit(main())
