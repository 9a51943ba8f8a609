"""The pre-training budget curve: probes and stem retrieval of checkpoints along each run.

mscl budget-curve [--workdir outputs/budget] [--budgets 150 300 600 1200 2400] [--seeds 0 1]
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from modeling_mscl._help import first_paragraph
from modeling_mscl.budget_curve import BudgetCurveSettings, run_budget_curve


def build_parser() -> HfArgumentParser:
    """The parser of ``mscl budget-curve``: the fields of :class:`BudgetCurveSettings`."""
    return HfArgumentParser(BudgetCurveSettings, description=first_paragraph(__doc__))


def main(argv: list[str] | None = None) -> int:
    """Parse :class:`BudgetCurveSettings` from ``argv`` and run the curve; returns the exit
    status."""
    (settings,) = build_parser().parse_args_into_dataclasses(argv)
    run_budget_curve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
