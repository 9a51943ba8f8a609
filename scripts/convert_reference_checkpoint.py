"""`mscl convert` from a checkout: runs modeling_mscl.commands.convert_reference_checkpoint."""

import sys

from modeling_mscl.commands.convert_reference_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
