"""`python -m pmmrec` runs the command-line interface (also under torchrun: `torchrun ... -m pmmrec finetune`)."""

import sys

from pmmrec.cli import main


def run() -> None:
    """The CLI; a torchrun worker whose command joined a process group leaves without tearing it down
    (`pmmrec.distributed.exit_worker`: gloo's teardown at exit aborted finished workers now and then)."""
    try:
        main()
    except SystemExit as stop:
        if "pmmrec.distributed" in sys.modules:  # the command may have joined a process group
            from pmmrec.distributed import exit_worker, joined_a_process_group

            if joined_a_process_group():
                exit_worker(stop.code)
        raise


if __name__ == "__main__":
    run()
