"""Run by ``torchrun --nproc_per_node 2`` from the tests: a multi-process visualization on the CPU."""

import sys

from accelerate import Accelerator

import clipviz
from clipviz.visualize import visualize

if __name__ == "__main__":
    spec, out, hook = sys.argv[1], sys.argv[2], sys.argv[3]
    accelerator = Accelerator(cpu=True)
    model = clipviz.load(spec)
    visualize(
        model,
        hook,
        [0, 1, 2, 3, 4],
        recipe="vit-paper",
        steps=4,
        copies=2,
        out=out,
        progress=False,
        accelerator=accelerator,
    )
    print(f"rank {accelerator.process_index} of {accelerator.num_processes} done")
