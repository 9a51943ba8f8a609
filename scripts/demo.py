"""`mscl demo` from a checkout: runs modeling_mscl.commands.demo."""

import sys

from modeling_mscl.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
