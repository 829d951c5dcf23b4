"""The torch device the learner and scorer unit tests run on.

CPU unless `STREAM_APP_TEST_DEVICE` names another (`cuda`), so the suite never
needs a GPU, and the same tests check the CUDA path where one is present
(`make test-device`, which `bench/device_check.sh` runs on a GPU machine).
"""

from __future__ import annotations

import os

import torch

DEVICE = torch.device(os.environ.get("STREAM_APP_TEST_DEVICE", "cpu"))
