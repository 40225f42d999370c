"""Scratch buffers and the serial section of the attention kernels."""
import threading

import pytest
import torch

from pipelines.attention.workspace import clear_workspace, scratch, serial

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_serial_runs_its_block_on_one_thread_and_restores(two_threads):
    with serial(CPU):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_serial_restores_the_thread_count_after_an_error(two_threads):
    with pytest.raises(RuntimeError):
        with serial(CPU):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_serial_leaves_one_thread_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with serial(CPU):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_scratch_reuses_a_buffer_per_key_and_thread():
    clear_workspace()
    a = scratch("t", (4, 5), torch.float32, CPU)
    assert scratch("t", (4, 5), torch.float32, CPU).data_ptr() == a.data_ptr()
    assert scratch("t", (4, 6), torch.float32, CPU).data_ptr() != a.data_ptr()
    other = []
    thread = threading.Thread(target=lambda: other.append(scratch("t", (4, 5), torch.float32, CPU).data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != a.data_ptr()  # threads never share a buffer
    clear_workspace()
