"""Run by ``torchrun --nproc_per_node 2`` from the tests: resumable example mining split across processes."""

import sys

from accelerate import Accelerator

import clipviz
from clipviz.examples import mine_examples_resumable, open_source

if __name__ == "__main__":
    spec, folder, out, hook = sys.argv[1:5]
    accelerator = Accelerator(cpu=True)
    model = clipviz.load(spec)
    mine_examples_resumable(
        model, hook, open_source(folder), out, top_k=3, shard_size=4, accelerator=accelerator, progress=False
    )
    print(f"rank {accelerator.process_index} of {accelerator.num_processes} done")
