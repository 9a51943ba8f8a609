"""`mscl corpus` from a checkout: runs modeling_mscl.commands.build_corpus."""

import sys

from modeling_mscl.commands.build_corpus import main

if __name__ == "__main__":
    sys.exit(main())
