"""`mscl export-onnx` from a checkout: runs modeling_mscl.commands.export_onnx."""

import sys

from modeling_mscl.commands.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
