"""
What every script of the project (train.py, evaluate.py, analyze.py) shares around its work: the parser whose
errors are one line, the help that shows each flag's default, and `run`, its main: a UserError, running out of
memory, an OSError, Ctrl-C and SIGTERM are each one line on stderr and an exit code.
"""

import argparse
import sys

import torch

from running import parallel, runfolder
from running.errors import UserError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the description and epilog as written, each flag's default after its help (none for a flag whose
    default is unset: its help says what it falls back to)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error of a script
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def run(command, args) -> int:
    """command(args) as a script's main: a UserError (a failed write among them: runfolder.WriteError) is
    one line on stderr and exit code 2, and so are running out of GPU or CPU memory and any other OSError.
    SIGTERM acts as Ctrl-C does (runfolder.signals_interrupt). Under torchrun (parallel.start) rank 0
    prints what every process meets; an error of one other process is printed by it, with its rank, and
    the others stop (torchrun ends them, or their next exchange with it fails: one line from rank 0)."""
    started = parallel.start()
    try:
        with runfolder.signals_interrupt():
            command(args)
    except UserError as e:
        return fail(f"error: {e}", 2, everyone=True)
    except torch.OutOfMemoryError as e:
        return fail(out_of_memory("GPU", e, args), 2)
    except OSError as e:
        return fail(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}", 2)
    except KeyboardInterrupt as e:
        return fail(f"interrupted by {e}" if str(e) else "interrupted", 143 if str(e) == "SIGTERM" else 130,
                    everyone=True)
    except Exception as e:
        if isinstance(e, RuntimeError) and "can't allocate memory" in str(e):  # the CPU allocator's
            return fail(out_of_memory("CPU", e, args), 2)
        if not parallel.failed_elsewhere(e):
            raise
        return fail("error: another process of this torchrun failed (its error is above); stopped", 2, everyone=True)
    finally:
        if started:
            parallel.stop()
    return 0


def out_of_memory(where: str, e: Exception, args) -> str:
    """The one line for running out of GPU or CPU memory, naming --batch-size."""
    now = f"now {args.batch_size}" if getattr(args, "batch_size", None) else "unset: chosen for the task"
    return (f"error: out of {where} memory ({str(e).splitlines()[0][:240]}); lower --batch-size ({now}),"
            " or use --dtype bfloat16")


def fail(line: str, code: int, everyone: bool = False) -> int:
    """Print an error line, return the exit code. Under torchrun what every process meets (everyone) is
    printed by rank 0 alone; what one process meets by itself, naming its rank."""
    if parallel.is_main():
        print(line, file=sys.stderr)
    elif not everyone:
        print(f"{line} (rank {parallel.rank()})", file=sys.stderr)
    return code
