"""`mscl probe` from a checkout: runs modeling_mscl.commands.probe."""

import sys

from modeling_mscl.commands.probe import main

if __name__ == "__main__":
    sys.exit(main())
