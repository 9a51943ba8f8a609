"""`mscl pretrain` from a checkout: runs modeling_mscl.commands.pretrain."""

import sys

from modeling_mscl.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
