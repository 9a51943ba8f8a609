"""`mscl push` from a checkout: runs modeling_mscl.commands.push_to_hub."""

import sys

from modeling_mscl.commands.push_to_hub import main

if __name__ == "__main__":
    sys.exit(main())
