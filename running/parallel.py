"""
Many devices, on engines that exist (torch.distributed and accelerate); docs/distributed.md says how to run them.

    data parallel  `torchrun --nproc_per_node N train.py ...`: every process holds the model and takes its share
                   of each minibatch (shard), the means and gradients weighted by the shares and summed over the
                   processes (mean, mean_gradients) so that all take the same Adam step; prepare, the evaluation
                   and the counts take chunks round-robin (chunks), the knockout map its jobs (deal), and the
                   parts are summed (total, summed). Rank 0 alone locks, prints and writes (is_main); Ctrl-C and
                   SIGTERM stop every process after the same training step. A training loop meets these through
                   one wrapper of its loss function, DataParallel. gloo on CPU, NCCL on GPUs, each process its
                   own GPU (LOCAL_RANK).
    device map     `--device-map auto | balanced | FILE`: one model's layers over several devices (dispatch),
                   by accelerate's infer_auto_device_map and dispatch_model. Layers run one device after another:
                   a model that fits no single device fits, it does not get faster.

Alone (no torchrun) every function here is the identity or a no-op: one process is world 1, rank 0.
"""

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from running.errors import UserError

# ----------------------------------------------------------------------------- data parallel: who am I


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """The process that locks, prints and writes (rank 0; the only one without torchrun)."""
    return rank() == 0


def start() -> bool:
    """Under torchrun (WORLD_SIZE > 1 in the environment): join the process group, gloo for CPU tensors and
    NCCL for CUDA ones, each process on its own GPU (LOCAL_RANK); the other ranks' stdout goes to /dev/null
    (rank 0 prints). Returns whether it joined now (then `stop` leaves at the end). Alone: nothing, False."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # for the life of the process
    return True


def stop() -> None:
    """Leave the process group (the end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device(chosen: torch.device) -> torch.device:
    """The device of this process: under torchrun a CUDA device is the GPU of LOCAL_RANK (start set it)."""
    if world_size() > 1 and chosen.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return chosen


# ----------------------------------------------------------------------------- data parallel: sharing work


def bounds(n: int) -> list[int]:
    """Where each rank's contiguous share of n items begins, and n at the end: the first n % world ranks
    take one more (torch.tensor_split's rule)."""
    W = world_size()
    return [r * (n // W) + min(r, n % W) for r in range(W)] + [n]


def shard(x):
    """This process's contiguous share of x's rows (a tensor, an ascale.Batch: anything that takes a
    slice), for a training minibatch; the whole of x alone."""
    if world_size() == 1:
        return x
    b = bounds(len(x))
    return x[b[rank()]:b[rank() + 1]]


def chunks(n: int, size: int) -> range:
    """The starts of this process's chunks of `size` of n rows: chunk k goes to rank k % world, so every
    chunk is the one process's chunk and gives its numbers bit for bit (prepare, evaluation). The rows of
    the others' chunks are left at 0, for `total` or `summed` to fill."""
    return range(rank() * size, n, world_size() * size)


def by_length(batch, batch_size: int, shared: bool = True):
    """Index tensors of up to batch_size prompts of a prepared set (ascale.Batch) of about one length, shortest
    first (this process's share; shared=False: all of them in every process): for passes over the whole set."""
    order = batch.answer_pos.argsort(stable=True)
    for i in chunks(len(batch), batch_size) if shared else range(0, len(batch), batch_size):
        yield order[i:i + batch_size]


def deal(jobs: list) -> list:
    """This process's jobs, dealt round-robin (jobs of a similar cost stay spread over the processes)."""
    return jobs[rank()::world_size()]


def total(x: torch.Tensor) -> torch.Tensor:
    """x summed over the processes, in each (alone: x): counts, and tensors each process filled in part
    (its chunks or jobs; zeros elsewhere, so the sum is exact)."""
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def summed(obj, *names: str):
    """obj with its tensors `names` (None skipped) summed over the processes in place: a dataclass that
    each process filled in part (ascale.prepare's Batch). Returns obj."""
    for name in names:
        if world_size() > 1 and getattr(obj, name) is not None:
            dist.all_reduce(getattr(obj, name))
    return obj


def weight(n: int) -> float:
    """This process's share of a minibatch of n (shard): the size of its part over n."""
    b = bounds(n)
    return (b[rank() + 1] - b[rank()]) / n if n else 0.0


def mean(x: torch.Tensor, n: int) -> torch.Tensor:
    """x, a mean over this process's share of a minibatch of n (shard), made the whole minibatch's mean:
    the processes' means weighted by their shares and summed. A process without a prompt of it adds 0
    (its mean is 0/0). Alone: x."""
    if world_size() == 1:
        return x
    return total(x * weight(n) if weight(n) > 0 else torch.zeros_like(x))


def mean_gradients(params, n: int) -> None:
    """The gradients, each of the loss over this process's share of a minibatch of n, made the whole
    minibatch's (as `mean`, in one all_reduce), so that every process takes the same optimizer step. A term
    that is the same in every process (ascale's ℓ1) keeps its own gradient: the weights add up to 1."""
    if world_size() == 1:
        return
    params = list(params)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = mean(torch.cat([g.flatten() for g in grads]), n)
    for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = g.view_as(p).clone()


NAMES = ("Ctrl-C", "SIGTERM")


class DataParallel:
    """torchrun's data parallelism around a training loop's loss function, one wrapper (ascale.fit):

        loss_fn = parallel.DataParallel(loss_fn, opt)   # only under torchrun; alone the loop is the plain one
        loss, terms = loss_fn(minibatch)

    A call takes this process's share of the minibatch (shard) and returns the loss and its terms as the whole
    minibatch's means (mean): every process logs the same numbers. The loss's gradient is the share's own; before
    each optimizer step a hook makes the gradients the whole minibatch's (mean_gradients), so that every process
    takes the same Adam step. Ctrl-C and SIGTERM are noted, not raised, and at each call the processes agree
    (one small all_reduce): when any has one, KeyboardInterrupt("Ctrl-C" or "SIGTERM") is raised in all, so all
    stop after the same step. close() puts the signal handlers back and removes the hook."""

    def __init__(self, loss_fn, opt):
        self.loss_fn, self.params = loss_fn, [p for group in opt.param_groups for p in group["params"]]
        self.got, self.previous, self.n = set(), {}, 0
        for sig, name in zip((signal.SIGINT, signal.SIGTERM), NAMES, strict=True):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self.previous[sig] = signal.signal(sig, lambda s, f, name=name: self.got.add(name))
        self.hook = opt.register_step_pre_hook(lambda *_: mean_gradients(self.params, self.n))

    def __call__(self, batch):
        flags = total(torch.tensor([name in self.got for name in NAMES], dtype=torch.int32))  # processes with each
        if flags.any():
            raise KeyboardInterrupt("SIGTERM" if flags[1] else "Ctrl-C")
        self.n = len(batch)
        if weight(self.n) > 0:
            loss, terms = self.loss_fn(shard(batch))
        else:                                    # no prompt of this minibatch here: adds nothing, joins the sums
            loss = sum(0 * p.sum() for p in self.params)
            terms = {k: torch.zeros(()) for k in ("L_E", "L_F", "L_M")}
        means = mean(torch.stack([loss.detach(), *(t.detach().to(loss.device) for t in terms.values())]), self.n)
        return loss + (means[0] - loss).detach(), dict(zip(terms, means[1:], strict=True))  # value: the mean

    def close(self) -> None:
        self.hook.remove()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def agree(error: BaseException | None = None) -> None:
    """Rank 0's outcome of what it alone does (lock the run folder), told to every process: called by all at
    the same point, it raises rank 0's error (as a UserError) in the others. Alone: nothing."""
    if world_size() == 1:
        return
    told = [None if error is None else str(error) or type(error).__name__]
    dist.broadcast_object_list(told, src=0)
    if told[0] is not None and not is_main():
        raise UserError(told[0])


def failed_elsewhere(e: BaseException) -> bool:
    """Whether e is what a process meets when another process of the run has failed (its peer is gone)."""
    return world_size() > 1 and isinstance(e, dist.DistError | RuntimeError) and (
        isinstance(e, dist.DistError) or "connection" in str(e).lower() or "gloo" in str(e).lower())


# ----------------------------------------------------------------------------- device map

DEVICE_MAPS = ("auto", "balanced")
NO_SPLIT = ["Block"]  # a block's tensors stay together on one device


def device_map(model, how: str) -> dict[str, str | int]:
    """The placement of each module of gpt2.GPT for --device-map: "auto" fills the GPUs in order (then the
    CPU), "balanced" spreads the layers evenly over the GPUs (accelerate's get_balanced_memory), a FILE is a
    JSON object {"wte": 0, "h.0": 0, ..., "h.11": 1, "ln_f": 1, "lm_head": 1} of GPU indices, "cpu" or
    "disk" (its keys: module names, `python -c "import gpt2"` ... see docs/distributed.md)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory
    if how in DEVICE_MAPS:
        memory = get_balanced_memory(model, no_split_module_classes=NO_SPLIT) if how == "balanced" else None
        return infer_auto_device_map(model, max_memory=memory, no_split_module_classes=NO_SPLIT)
    try:
        placed = json.loads(Path(how).read_text())
    except FileNotFoundError:
        raise UserError(f"--device-map {how}: no such file; pass auto, balanced, or a JSON file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"--device-map {how} is not a JSON file ({type(e).__name__}); pass auto, balanced or one"
                        ' like {"wte": 0, "h.0": 0, "h.1": 1, "ln_f": 1, "lm_head": 1}') from None
    return check_map(model, placed, how)


def check_map(model, placed, name: str) -> dict:
    """A device map read from a file, checked: every parameter covered once, known devices."""
    if not isinstance(placed, dict):
        raise UserError(f"--device-map {name} must hold a JSON object of module name: device")
    modules = dict(model.named_modules())
    gpus = torch.cuda.device_count()
    for key, where in placed.items():
        if key not in modules:
            raise UserError(f"--device-map {name}: {key!r} is not a module of the model; use wte, wpe, h.0 ..."
                            f" h.{model.config.n_layer - 1}, ln_f, lm_head")
        ok = where in ("cpu", "disk") or (isinstance(where, int) and 0 <= where < gpus)
        if not ok:
            raise UserError(f"--device-map {name}: {key!r} goes to {where!r}; use a GPU index below {gpus}, "
                            '"cpu" or "disk"')
    for pname, _ in model.named_parameters(remove_duplicate=False):
        owners = [k for k in placed if pname.startswith(k + ".")]
        if len(owners) != 1:
            what = "no module of it is placed" if not owners else f"it is placed twice ({', '.join(owners)})"
            raise UserError(f"--device-map {name}: parameter {pname}: {what}; place each module once")
    return placed


def dispatch(model, placed: dict, offload_dir=None):
    """Put model's modules where `placed` says (accelerate's dispatch_model: hooks move each module's
    inputs to its device; "cpu" modules on a GPU machine and "disk" ones are offloaded and brought to the
    first device when they run). The weights move module by module: no second copy in CPU memory.
    Returns the model."""
    import atexit
    import shutil
    import tempfile

    from accelerate import dispatch_model
    end = next(d for k, d in placed.items() if k in ("", "lm_head", "lm_head.weight"))
    if end == "disk" or (end == "cpu" and set(placed.values()) - {"cpu", "disk"}):
        raise UserError(f"--device-map puts lm_head on {end!r}, where it would be offloaded; the unembedding is"
                        " read directly (knockout, the objective): give lm_head a GPU (or the CPU when no GPU is used)")
    if "disk" in placed.values() and offload_dir is None:
        offload_dir = tempfile.mkdtemp(prefix="ascale-offload-")
        atexit.register(shutil.rmtree, offload_dir, ignore_errors=True)
    return dispatch_model(model, placed, offload_dir=offload_dir)  # keeps a tied unembedding tied (GPT-2)
