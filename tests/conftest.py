"""Test setup: 8 host CPU devices for the sharding tests.

XLA reads the flag when the backend starts, so it is set before any test
module touches a device.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
