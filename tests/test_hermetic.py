"""The suite's own guarantees (tests/conftest.py): no network, datasets in a temporary dir."""

import os
import socket

import pytest

from jaxrnn.data import pipeline


def test_connections_beyond_this_machine_fail():
    with pytest.raises(OSError, match="tests must not reach the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1, never routed
    with socket.create_server(("127.0.0.1", 0)) as server:  # loopback still works
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_datasets_are_prepared_in_a_temporary_directory(tmp_path_factory):
    """Under this run's temporary root (shared by its xdist workers), not ~/tensorflow_datasets."""
    data_dir = os.path.realpath(pipeline.default_data_dir())
    root = os.path.realpath(tmp_path_factory.getbasetemp().parent)
    assert data_dir.startswith(root + os.sep), (data_dir, root)
