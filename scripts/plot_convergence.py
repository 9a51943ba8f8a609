"""`mscl plot` from a checkout: runs modeling_mscl.commands.plot_convergence."""

import sys

from modeling_mscl.commands.plot_convergence import main

if __name__ == "__main__":
    sys.exit(main())
