"""`mscl retrieval` from a checkout: runs modeling_mscl.commands.stem_retrieval."""

import sys

from modeling_mscl.commands.stem_retrieval import main

if __name__ == "__main__":
    sys.exit(main())
