"""The speed tools in tools/: what they time is what they claim to time."""

import collections
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import pytest

import se_flax
from se_flax.benchmark import hlo

_TOOLS = os.path.join(os.path.dirname(__file__), '..', 'tools')
# timm resnet50's MACs at 224 px (senet_spec.md, section 2) less its
# classifier (2048 x 1000): what its 53 convolutions compute.
_RESNET50_CONV_MACS = 4_089_184_256 - 2048 * 1000


def _tool(name='compare_conv_kernels_with_torch'):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(_TOOLS, name + '.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _conv_macs(convs):
  return sum(
      count * (size // stride) ** 2 * c_in * c_out * k * k
      for _, size, c_in, c_out, k, stride, count in convs
  )


def test_conv_list_is_resnet50s_by_count_and_macs():
  convs = _tool().resnet50_convs(224)
  assert sum(c[-1] for c in convs) == 53
  assert _conv_macs(convs) == _RESNET50_CONV_MACS


def test_conv_list_has_the_kernels_of_se_flax_seresnet50():
  model = se_flax.create_model('seresnet50')
  shapes = jax.eval_shape(
      lambda: model.init(
          jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False
      )
  )
  kernels = [
      leaf.shape
      for path, leaf in jax.tree_util.tree_leaves_with_path(shapes['params'])
      if path[-1].key == 'kernel' and len(leaf.shape) == 4
  ]
  from_model = collections.Counter(kernels)
  from_tool = collections.Counter()
  for _, _, c_in, c_out, k, _, count in _tool().resnet50_convs(224):
    from_tool[(k, k, c_in, c_out)] += count
  # SE's excitation layers are dense (2-D) kernels, so not among these.
  assert from_tool == from_model


def _opcodes(hlo_text):
  """How often each opcode occurs in an HLO module, fused bodies included."""
  return collections.Counter(
      instruction[3]
      for instruction in map(hlo.parse_instruction, hlo_text.splitlines())
      if instruction
  )


def test_conv_train_programs_keep_the_forward_and_the_step_gradients():
  tool = _tool()
  # The stem, the first 1x1 and the first 3x3, on 32-px images, batch 2.
  convs = tool.resnet50_convs(32)[:3]
  programs = tool.jax_programs(2, convs, 'train')
  # (convolutions, products) in each compiled program: the forward and
  # the kernel's gradient for the stem (its input is the image); the
  # forward and both gradients for the others (1x1s are products).
  expected = [(2, 0), (0, 3), (3, 0)]
  for index, ((f, args), conv, counts) in enumerate(
      zip(programs, convs, expected)
  ):
    name, size, _, c_out, _, stride, _ = conv
    params, x, cotangent = args
    # The cotangent is an argument: a constant would let XLA fold it in.
    assert cotangent.shape == (2, size // stride, size // stride, c_out)
    opcodes = _opcodes(f.lower(*args).compile().as_text())
    assert (opcodes['convolution'], opcodes['dot']) == counts, name
    y, grads = f(*args)
    assert y.shape == cotangent.shape
    if tool.input_gradient(index):
      grad_params, grad_x = grads
      assert grad_x.shape == x.shape
    else:
      (grad_params,) = grads
    kernel = params['params']['kernel']
    assert grad_params['params']['kernel'].shape == kernel.shape


def test_train_py_tool_times_only_windows_after_the_warm_up(tmp_path):
  rows = [
      {'step': 1, 'compile_seconds': 20.0},
      {'step': 4, 'train/step_time_ms': 5000.0},
      {'step': 4, 'steps_per_sec': 0.2},
      {'step': 8, 'train/step_time_ms': 3800.0},
      {'step': 12, 'train/step_time_ms': 3100.0},
      {'step': 16, 'train/step_time_ms': 3300.0},
      {'step': 16, 'eval/top1': 0.0},
  ]
  (tmp_path / 'metrics.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in rows)
  )
  logged_windows = _tool('compare_train_py_with_timm').logged_windows
  # The first window is steps 2-4: step 1 compiled, and is not step time.
  assert logged_windows(str(tmp_path), 1) == [
      (3, 5.0),
      (4, 3.8),
      (4, 3.1),
      (4, 3.3),
  ]
  assert logged_windows(str(tmp_path), 8) == [(4, 3.1), (4, 3.3)]
  with pytest.raises(SystemExit, match=r'at steps \[4, 8, 12, 16\]'):
    logged_windows(str(tmp_path), 13)
