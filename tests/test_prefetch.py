"""Device prefetch: the same batches, in the same order, sharded over the mesh, read ahead."""

import jax
import numpy as np

from vgg_jax.core import sharding


def local_batches(n, reads):
    """n small uint8 batches; `reads` records how many the consumer has pulled so far."""
    for i in range(n):
        reads.append(i)
        yield {"image": np.full((8, 2, 2, 3), i, np.uint8), "label": np.arange(8, dtype=np.int32) + i}


def test_prefetch_gives_the_same_batches_in_order_sharded_over_the_mesh():
    """Catches batches reordered (a queue popped at the wrong end), dropped at the end of the
    stream, or placed on one device instead of split over the 'data' axis."""
    mesh = sharding.data_mesh()
    reads = []
    out = list(sharding.prefetch_to_mesh(local_batches(5, reads), mesh, ahead=2))
    assert len(out) == 5
    for i, batch in enumerate(out):
        np.testing.assert_array_equal(batch["image"], np.full((8, 2, 2, 3), i, np.uint8))
        np.testing.assert_array_equal(batch["label"], np.arange(8) + i)
        assert batch["image"].sharding.is_equivalent_to(sharding.batch_sharded(mesh), 4)
        assert len(batch["image"].addressable_shards) == jax.device_count()


def test_prefetch_reads_size_batches_ahead():
    """Catches a prefetch that does not read ahead (nothing overlaps the step) or reads the whole
    stream (unbounded host and device memory on an endless train stream)."""
    reads = []
    batches = sharding.prefetch_to_mesh(local_batches(10, reads), sharding.data_mesh(), ahead=2)
    next(batches)
    assert len(reads) == 3  # the first batch handed out, the next two on their way
    next(batches)
    assert len(reads) == 4
