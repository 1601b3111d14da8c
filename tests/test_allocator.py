"""The freed memory a training run keeps (grocery/allocator.py), read from a process's resident size.

Measured in a fresh process: one that ran other tests may hold free memory a block would reuse."""

import json
import subprocess
import sys

MIB = 2**20
BLOCK = 64 * MIB  # over glibc's largest mmap threshold (32 MiB): by default a mapping, unmapped when freed

MEASURE = f"""
import json, psutil, torch
from grocery.allocator import memory_kept

def resident():
    return psutil.Process().memory_info().rss

def grown_by_a_freed_block():
    before = resident()
    block = torch.ones({BLOCK} // 4)  # every page written, as a step's activations are
    del block
    return resident() - before

figures = {{"default": grown_by_a_freed_block()}}
with memory_kept() as kept:
    figures["applied"], figures["kept"], inside = kept, grown_by_a_freed_block(), resident()
figures["given_back"], figures["default_again"] = inside - resident(), grown_by_a_freed_block()
print(json.dumps(figures))
"""


def test_a_run_keeps_freed_memory_and_gives_it_back_after():
    run = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, check=True)
    figures = json.loads(run.stdout)
    assert figures["applied"]  # these machines run glibc
    assert figures["default"] < 16 * MIB  # glibc's default: the freed block went back at once
    assert figures["kept"] > BLOCK * 3 // 4  # kept for the next step to reuse
    assert figures["given_back"] > BLOCK * 3 // 4  # returned on leaving
    assert figures["default_again"] < 16 * MIB  # and the defaults are back
