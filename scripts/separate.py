"""`mscl separate` from a checkout: runs modeling_mscl.commands.separate."""

import sys

from modeling_mscl.commands.separate import main

if __name__ == "__main__":
    sys.exit(main())
