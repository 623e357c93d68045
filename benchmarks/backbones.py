"""``bench families --backbone NAME``: every family's meta-iteration on NAME beside Conv-4, same run.

At 84x84x3 (mini-ImageNet's size), 5-way 1-shot, ``--query`` queries, meta-batch ``--tasks`` (4),
each family is built twice from the same seed, once per backbone, at its default hyperparameters
(``--width`` sets every family's first-stage width instead), with the exceptions the plain
``bench families`` makes (``path="split"`` for maml, fomaml, metasgd: no torch.compile) and
``encoder="conv"`` for mann (its default encoder, pixels, has no backbone). Each learner's
``meta_train_step`` runs once to warm up; its peak memory is measured on one more call
(:mod:`benchmarks.memory`); then ``--iters`` rounds time every learner once each, in a rotating
order, and medians are printed with the ratio NAME / Conv-4 of time and of peak memory.
A family that fails on a backbone (memory, say) gets its error in the row instead of figures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from benchmarks import memory
from benchmarks.batches import SHOTS, WAYS, random_batch
from benchmarks.maml import device_name, interleaved_medians
from learners.base import Learner
from learners.checkpoint import build_learner
from learners.registry import family_names

COLOUR_84 = (3, 84, 84)
BASELINE = "conv4"
SPLIT_FAMILIES = ("maml", "fomaml", "metasgd")  # path fixed to "split": no torch.compile
FAMILY_FIXED: dict[str, dict[str, object]] = {
    **{f: {"path": "split"} for f in SPLIT_FAMILIES},
    "mann": {"encoder": "conv"},
}


def build(family: str, backbone: str, width: int | None, device: torch.device) -> Learner:
    torch.manual_seed(0)
    hparams = {"backbone": backbone, **FAMILY_FIXED.get(family, {}), **({"width": width} if width else {})}
    return build_learner({"family": family, "hparams": hparams, "image_shape": list(COLOUR_84), "ways": WAYS}, device)


def run(
    backbone: str,
    families: list[str] | None,
    tasks: int,
    query: int,
    width: int | None,
    iters: int,
    device: torch.device,
) -> int:
    """Print the table; 0, or 1 when a family failed on a backbone."""
    names = families or family_names()
    print(
        f"meta-iteration per learner family on {backbone} vs {BASELINE}, {WAYS}-way {SHOTS}-shot {query} query, "
        f"meta-batch {tasks}, {'x'.join(map(str, COLOUR_84))}; {device_name(device)}; torch {torch.__version__}; "
        f"medians of {iters} interleaved runs after one warm-up; width {width or 'each family default'}; "
        f"peak memory: {memory.HOW[device.type]}",
        flush=True,
    )
    batch = random_batch(device, tasks=tasks, image=COLOUR_84, query=query)
    methods: dict[tuple[str, str], Callable[[], object]] = {}
    errors: dict[tuple[str, str], str] = {}
    peaks: dict[tuple[str, str], int] = {}
    for family in names:
        for name in (BASELINE, backbone):
            key = (family, name)
            try:
                learner = build(family, name, width, device)
                step = functools.partial(learner.meta_train_step, batch)
                step()  # warm-up
                peaks[key] = memory.peaks({"step": step}, device)["step"]
                methods[key] = step
            except (RuntimeError, ValueError, MemoryError) as exc:  # out of memory, a refused setting
                errors[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            print(f"  measured {family} on {name}" + (f": {errors[key]}" if key in errors else ""), flush=True)
    medians = interleaved_medians({f"{f}:{b}": fn for (f, b), fn in methods.items()}, iters, device)

    print(
        f"\n{'family':<12}{BASELINE + ' ms':>11}{backbone + ' ms':>13}{'time x':>8}"
        f"{BASELINE + ' MiB':>12}{backbone + ' MiB':>14}{'memory x':>10}"
    )
    for family in names:
        base, other = (family, BASELINE), (family, backbone)
        if base in errors or other in errors:
            print(f"{family:<12}  {errors.get(base) or errors[other]}")
            continue
        t0, t1 = medians[f"{family}:{BASELINE}"], medians[f"{family}:{backbone}"]
        m0, m1 = peaks[base], peaks[other]
        print(
            f"{family:<12}{t0 * 1e3:>11.1f}{t1 * 1e3:>13.1f}{t1 / t0:>8.1f}"
            f"{memory.mib(m0):>12}{memory.mib(m1):>14}{m1 / max(m0, 1):>10.1f}"
        )
    return 1 if errors else 0
