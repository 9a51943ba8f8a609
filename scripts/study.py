"""`mscl study` from a checkout: runs modeling_mscl.commands.study."""

import sys

from modeling_mscl.commands.study import main

if __name__ == "__main__":
    sys.exit(main())
