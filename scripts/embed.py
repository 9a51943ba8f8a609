"""`mscl embed` from a checkout: runs modeling_mscl.commands.embed."""

import sys

from modeling_mscl.commands.embed import main

if __name__ == "__main__":
    sys.exit(main())
