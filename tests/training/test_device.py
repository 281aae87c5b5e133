"""training/device.py: the one performance context restores the collector and the thread count."""

from __future__ import annotations

import gc

import pytest
import torch

from cnnviz_cli.training.device import command_performance


@pytest.mark.parametrize("one_thread", [False, True])
def test_command_performance_pauses_gc_and_restores_everything_even_after_an_error(one_thread):
    threads = torch.get_num_threads()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), command_performance(one_thread=one_thread):
        assert not gc.isenabled()
        assert torch.get_num_threads() == (1 if one_thread else threads)
        raise RuntimeError("boom")
    assert gc.isenabled()
    assert torch.get_num_threads() == threads
