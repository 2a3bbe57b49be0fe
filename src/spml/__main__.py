"""``python -m spml``: the command line, so that ``torchrun -m spml train ...`` launches training."""

import sys

from spml.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
