"""`mscl budget-curve` from a checkout: runs modeling_mscl.commands.budget_curve."""

import sys

from modeling_mscl.commands.budget_curve import main

if __name__ == "__main__":
    sys.exit(main())
