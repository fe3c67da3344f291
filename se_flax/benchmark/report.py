"""The benchmark's table: one row per variant, the paired ratios under it."""


def _fmt(x, spec, scale=1.0):
  return '-' if x is None else format(x * scale, spec)


def format_time_ratio(r: dict) -> str:
  """'median (95% interval of the median, rounds min-max); images/s
  ratio' of a `timing.time_ratio_summary`."""
  interval = r['time_ratio_interval']
  interval = (
      f'95% interval of the median {interval[0]:.3f}-{interval[1]:.3f}, '
      if interval
      else ''
  )
  return (
      f"{r['time_ratio']:.3f} ({interval}rounds {r['time_ratio_min']:.3f}-"
      f"{r['time_ratio_max']:.3f}); images/s ratio {1 / r['time_ratio']:.3f}"
  )


def format_table(results: dict) -> str:
  """A markdown table of a `run()` result, with the ratios under it."""
  env, peak, args = results['env'], results['peak'], results['args']
  lines = [
      f"{env['backend']} x{env['devices']} ({env['device_kind']}), jax "
      f"{env['jax']}; {args['model']} batch {args['batch']} @ "
      f"{args['image_size']} px {args['dtype']}; peak "
      f"{peak['flops_per_s'] / 1e12:.3f} TFLOP/s/device ({args['dtype']} "
      f"{peak['size']}^3 matmul); load {env['loadavg_before']} -> "
      f"{env['loadavg_after']}; {env['runtime']}",
      '',
      '| variant | path | kind | img/s | img/s/dev | step ms (min-max) | '
      'compile s | XLA GiB | TFLOP/s/dev | MFU |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for s in results['variants']:
    lines.append(
        f"| {s['label']} | {s['path']} | {s['kind']} | "
        f"{s['images_per_s']:.1f} | "
        f"{s['images_per_s_per_device']:.1f} | {s['step_ms']:.1f} "
        f"({s['step_ms_min']:.1f}-{s['step_ms_max']:.1f}) | "
        f"{_fmt(s['compile_s'], '.1f')} | "
        f"{_fmt(s['xla_memory_bytes'], '.2f', 2.0 ** -30)} | "
        f"{_fmt(s.get('model_tflops_per_s_per_device'), '.3f')} | "
        f"{_fmt(s.get('mfu'), '.1%')} |"
    )
  lines.append('')
  for r in results['ratios']:
    lines.append(
        f"{r['kind']}: time({r['numerator']}) / time({r['denominator']}) = "
        f'{format_time_ratio(r)}; CPU s ratio '
        f"{_fmt(r.get('cpu_ratio'), '.3f')}"
    )
  if results.get('peak_device_memory') is not None:
    lines.append(
        f'peak device memory (process): '
        f"{results['peak_device_memory'] / 2**30:.2f} GiB"
    )
  jax_rows = [s for s in results['variants'] if s['framework'] == 'jax']
  transfers = {
      f"{s['label']} {s['kind']}": s['host_transfers']
      for s in jax_rows
      if s['host_transfers']
  }
  lines.append(
      'host transfers in the compiled programs: '
      + (str(transfers) if transfers else 'none')
  )
  fusion = [
      f"{s['label']} {s['kind']} {s['se_fusion']['fused']}/"
      f"{s['se_fusion']['se_blocks']}"
      for s in jax_rows
      if s['se_fusion'] and s['se_fusion']['se_blocks']
  ]
  if fusion:
    lines.append(
        'SE scale fused into the residual add (blocks): ' + ', '.join(fusion)
    )
  if env['backend'] == 'cpu':
    per_step = '; '.join(
        f"{s['label']} {s['kind']} {_fmt(s['cpu_s_per_step'], '.2f')} / "
        f"{_fmt(s['sys_s_per_step'], '.2f')} / "
        f"{_fmt(s['page_faults_per_step'], '.0f')}"
        for s in results['variants']
    )
    lines.append(
        'per step, process CPU s / system s / page faults: ' + per_step
    )
    if any((s['page_faults_per_step'] or 0) > 1e5 for s in jax_rows):
      lines.append(
          'many page faults per step: glibc gives XLA fresh '
          'memory for every call unless se_flax.configure_runtime() '
          'ran first (PERFORMANCE.md, "Page faults")'
      )
  for note in results.get('notes', []):
    lines.append(note)
  return '\n'.join(lines)
