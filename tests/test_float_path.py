"""`make test` runs nbval a second time with ATEN_CPU_CAPABILITY=default: this shows it is another float path.

torch picks its CPU kernels by the instruction set (AVX-512, AVX2, ...). The portable kernels sum in
another order, so a few training steps already end in other weights: the trained numbers of the book
move as they do on a reader's CPU, and the checked claims must hold all the same.
"""

from __future__ import annotations

import os
import subprocess
import sys

TRAIN = """
import torch
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
    torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 2, 1),
)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
x, y = torch.rand(8, 3, 32, 32), (torch.rand(8, 32, 32) > 0.5).long()
for _ in range(20):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
w = torch.cat([p.detach().flatten() for p in model.parameters()])
print(torch.backends.cpu.get_cpu_capability(), repr(w.double().sum().item()), repr(w[:64].tolist()))
"""


def _train(**env: str) -> tuple[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", TRAIN], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.split(" ", 1)
    return out[0], out[1]


def test_the_second_float_path_changes_trained_weights():
    native_capability, native = _train()
    default_capability, portable = _train(ATEN_CPU_CAPABILITY="default")
    assert default_capability == "DEFAULT"
    if native_capability == "DEFAULT":  # a CPU without vector kernels has one float path only
        assert native == portable
    else:
        assert native != portable, f"{native_capability} and the portable kernels trained identical weights"
