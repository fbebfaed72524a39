import os

# Tests run offline and single-threaded per process (several processes share 2 cores).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests.shards import make_image_shards  # noqa: E402


@pytest.fixture
def image_shards(tmp_path):
    """8 shards of labelled JPEGs, sizes 7, 8, 9, ... (uneven on purpose): returns (dir, keys)."""
    return make_image_shards(tmp_path / "shards", sizes=[7, 8, 9, 10, 11, 12, 13, 14])
