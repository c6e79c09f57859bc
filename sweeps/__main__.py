"""python -m sweeps {generate,run,best,report}: see README."""

import sys

from sweeps.main import main

if __name__ == "__main__":
    sys.exit(main())
