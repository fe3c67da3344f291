"""Throughput benchmark: train step and inference, SE overhead, timm, MFU.

    python -m se_flax.benchmark --model seresnet50 --batch 32 --dtype bf16
    python -m se_flax.benchmark --model seresnet50 --se_overhead
    python -m se_flax.benchmark --model seresnet50 --batch 16 --dtype fp32 \\
        --kinds train --paths loop,user --runtimes tuned,untuned --se_overhead \\
        --timm --torch_python /path/to/venv-with-torch/bin/python

What is timed, on synthetic batches made on the devices (no input
pipeline; TensorFlow is never imported), per path (`jax_steps.py`):
- 'loop': the training loop's step, `steps.train_step` with
  `base_config()`'s SGD at this batch size, and `steps.eval_step`, jitted
  by `loop.jit_steps` as training does (state replicated and donated,
  batch sharded on 'data', `runtime.compiler_options()`), on every device:
  what `train.py` runs.
- 'user': `create_model` + a plain `jax.jit` of `model.apply` and an
  optax SGD update on one device, as a notebook writes it.
The benchmark's process is configured as `train.py` configures itself
(`se_flax.runtime.configure()`: on CPU, glibc keeps freed memory and XLA
keeps its own convolutions); `--runtimes untuned` times the same paths
in worker processes left as Python starts, in the same rounds. Several
paths, or untuned ones, run each in a process of its own, as users run
them.

Method: each variant is compiled ahead of time (compile time = `lower` +
`compile`; a `Compiled` object cannot recompile, so a step whose state
changes type between steps fails instead of silently recompiling), warmed
up, then timed in `--reps` rounds of `--steps` steps, the host clock read
after `block_until_ready` on the round's last outputs. The variants of one
run are interleaved round by round (order reversed every other round) so
that drift on a shared machine hits them alike; ratios are per round
(paired), and their median is reported, in wall time and in process CPU
seconds, with a distribution-free 95% interval for the median from 6
rounds on (`timing.median_interval`): on a shared machine one run's median
moves by several percent, and only an interval that clears a target
decides it (about 25 rounds bring it to a few percent here). Figures are
medians over rounds, with the min-max spread.

FLOPs (the MFU numerator) follow `models/stats.py`: multiply-accumulates of
convolutions and dense layers (SE FCs included; BN, activations, pooling,
the SE scale and residual adds not counted), 2 FLOPs each. A train step is
1 forward + 2 backward (activation and weight gradients), so
`train FLOPs/image = 6 * MACs` and `inference FLOPs/image = 2 * MACs`. MFU
is model FLOP/s per device over a peak measured in the same run: a square
matrix product in the compute dtype on one device, timed in the same
rounds (`timing.matmul_peak_variant`).

`--se_overhead` adds the plain twin (the registry entry with `se=None`:
same stem, strides, init, dtype and step) and reports time(SE) /
time(plain) per path. `--timm` adds timm's model of the same name
(`--timm_model`) in PyTorch, run by a worker process (`--torch_python`,
default this interpreter), so the two frameworks never share threads or
allocator: channels_last, same batch, uint8 input normalised on the
device, SGD with the same momentum and weight decay, bf16/fp16 through
autocast (BN stays float32 there). torch and timm are not dependencies of
se_flax; without them the mode is skipped.
"""

from se_flax.benchmark.cli import main, run
from se_flax.benchmark.hlo import host_transfers, se_fusion
from se_flax.benchmark.jax_steps import (
    TRAIN_FLOPS_PER_FORWARD,
    flops_per_image,
    loop_step_variants,
    user_step_variants,
)
from se_flax.benchmark.report import format_table
from se_flax.benchmark.timing import (
    Variant,
    median_interval,
    paired_ratio,
    summarize,
)

__all__ = [
    'TRAIN_FLOPS_PER_FORWARD',
    'Variant',
    'flops_per_image',
    'format_table',
    'host_transfers',
    'loop_step_variants',
    'main',
    'median_interval',
    'paired_ratio',
    'run',
    'se_fusion',
    'summarize',
    'user_step_variants',
]
