"""`mscl transfer` from a checkout: runs modeling_mscl.commands.transfer."""

import sys

from modeling_mscl.commands.transfer import main

if __name__ == "__main__":
    sys.exit(main())
