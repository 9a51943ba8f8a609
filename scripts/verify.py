"""`mscl verify` from a checkout: runs modeling_mscl.commands.verify."""

import sys

from modeling_mscl.commands.verify import main

if __name__ == "__main__":
    sys.exit(main())
