"""--cluster without Ray says how to install it; a cluster without room for a worker says so."""

from __future__ import annotations

import sys

import pytest

from webui.queue.ray_workers import INSTALL_HINT, ClusterError, connect_cluster


def test_cluster_without_ray_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: import ray raises ImportError
    with pytest.raises(ClusterError) as info:
        connect_cluster("auto")
    assert str(info.value) == INSTALL_HINT and "pip install -e '.[cluster]'" in INSTALL_HINT
