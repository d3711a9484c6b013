"""datasets/cache.py: the bounded least-recently-used frame cache of the file-based datasets."""

from datasets.cache import FrameCache


def test_cache_evicts_the_least_recently_used_frame():
    loads = []

    def loader(key):
        def load():
            loads.append(key)
            return f"frame {key}"
        return load

    cache = FrameCache(2)
    assert cache.get("a", loader("a")) == "frame a"
    cache.get("b", loader("b"))
    cache.get("a", loader("a"))  # served, and now the most recently used
    cache.get("c", loader("c"))  # evicts b
    cache.get("a", loader("a"))
    cache.get("b", loader("b"))  # read again
    assert loads == ["a", "b", "c", "b"] and len(cache) == 2


def test_capacity_zero_keeps_nothing():
    loads = []
    cache = FrameCache(0)
    for _ in range(3):
        cache.get("a", lambda: loads.append(1) or "frame")
    assert len(loads) == 3 and len(cache) == 0
