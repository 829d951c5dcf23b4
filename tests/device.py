"""The torch device the learner and scorer unit tests run on, and how exact they can be there.

CPU unless `STREAM_APP_TEST_DEVICE` names another (`cuda`), so the suite never
needs a GPU, and the same tests check the CUDA path where one is present
(`bench/device_check.sh` runs them on a GPU machine).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

DEVICE = torch.device(os.environ.get("STREAM_APP_TEST_DEVICE", "cpu"))

# CUDA adds the gradients of a row that occurs several times in a batch with
# atomics, in no fixed order, so two runs of one stream differ in the last bits
# there; on the CPU they are identical. Restores copy values and stay exact,
# but sums over a restored table's other row layout may round differently.
EXACT = DEVICE.type == "cpu"


def assert_same(a: object, b: object, what: str = "", *, nan: bool = False) -> None:
    """`a == b` field by field: floats bit for bit on CPU, to float rounding elsewhere.

    NaN fails unless `nan` allows it (then a NaN must meet a NaN).
    """
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), what
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{what}.{f.name}", nan=nan)
    elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        assert_same(a.cpu().numpy(), b.cpu().numpy(), what, nan=nan)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_same(a[key], b[key], f"{what}[{key!r}]", nan=nan)
    elif isinstance(a, (float, np.ndarray)) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        assert (x.shape, x.dtype) == (y.shape, y.dtype), what
        if not nan and x.dtype.kind == "f":
            assert not (np.isnan(x).any() or np.isnan(y).any()), f"{what}: NaN"
        if EXACT:
            assert x.tobytes() == y.tobytes(), what
        else:
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, equal_nan=nan, err_msg=what)
    else:
        assert a == b, what
