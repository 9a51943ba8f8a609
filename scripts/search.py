"""`mscl search` from a checkout: runs modeling_mscl.commands.search."""

import sys

from modeling_mscl.commands.search import main

if __name__ == "__main__":
    sys.exit(main())
