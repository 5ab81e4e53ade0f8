"""``python -m claw_worker.cli``: the same as the ``clawctl`` console script."""

from claw_worker.cli import main

main(prog_name="clawctl")
