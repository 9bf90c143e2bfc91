"""read_safetensors refuses pickles by their first bytes, but not a safetensors header of 384 bytes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

from geomprobe.core.artifacts import read_safetensors
from geomprobe.core.errors import GeomprobeError


def test_header_length_with_low_byte_0x80_is_not_a_pickle(tmp_path):
    path = tmp_path / "x.safetensors"
    for pad in range(0, 400):  # metadata of growing length until the header is 0x180 bytes long
        save_file({"w": np.arange(3, dtype=np.float32)}, str(path), metadata={"pad": "x" * pad})
        head = path.read_bytes()[:8]
        if head[0] == 0x80:
            break
    else:
        pytest.fail("no header length with low byte 0x80 was produced")
    np.testing.assert_array_equal(read_safetensors(path, "rebuild it")["w"], np.arange(3, dtype=np.float32))
    path.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4))
    with pytest.raises(GeomprobeError, match="pickle"):
        read_safetensors(path, "rebuild it")
