"""The RNN net (GRU/LSTM over [time, features]) and its config: shapes, readouts, argument checks."""

from __future__ import annotations

import pytest
import torch

from keel.models.net_args import net_arguments, net_problems
from keel.models.nets import RNN


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_maps_a_batch_of_sequences_to_one_output_row_each(cell, readout, bidirectional):
    net = RNN([12, 3], 5, cell=cell, hidden_size=8, num_layers=2, bidirectional=bidirectional, dropout=0.1,
              readout=readout).eval()
    out = net(torch.randn(4, 12, 3))
    assert out.shape == (4, 5)
    assert net.rnn.hidden_size == 8 and net.rnn.num_layers == 2 and net.rnn.bidirectional == bidirectional
    assert net.head[-1].in_features == 8 * (2 if bidirectional else 1)


def test_last_readout_is_each_directions_summary_of_the_whole_sequence():
    torch.manual_seed(0)
    net = RNN([6, 2], 1, cell="gru", hidden_size=4, num_layers=2, bidirectional=True, dropout=0.0).eval()
    x = torch.randn(3, 6, 2)
    out, h_n = net.rnn(x)
    # forward after the last step, backward after the first: not out[:, -1] (its backward half saw one step)
    summary = torch.cat([out[:, -1, :4], out[:, 0, 4:]], dim=1)
    torch.testing.assert_close(net(x), net.head(summary))
    torch.testing.assert_close(summary, torch.cat([h_n[-2], h_n[-1]], dim=1))


def test_mean_readout_averages_the_outputs_over_time():
    net = RNN([5, 2], 2, cell="lstm", hidden_size=3, readout="mean").eval()
    x = torch.randn(2, 5, 2)
    out, _ = net.rnn(x)
    torch.testing.assert_close(net(x), net.head(out.mean(dim=1)))


def test_an_image_sample_is_read_row_by_row():
    net = RNN([1, 8, 8], 10, hidden_size=6).eval()
    seq = RNN([8, 8], 10, hidden_size=6).eval()
    seq.load_state_dict(net.state_dict())
    x = torch.randn(3, 1, 8, 8)
    assert net.rnn.input_size == 8
    torch.testing.assert_close(net(x), seq(x[:, 0]))  # row t of the image is time step t
    rgb = RNN([3, 4, 5], 2, hidden_size=6)
    assert rgb.rnn.input_size == 15 and rgb(torch.randn(2, 3, 4, 5)).shape == (2, 2)


def test_the_weights_do_not_fix_the_sequence_length():
    net = RNN([8, 4], 3, hidden_size=5).eval()
    assert net(torch.randn(2, 20, 4)).shape == (2, 3)  # only the contract fixes T


@pytest.mark.parametrize("kwargs,match", [
    ({"input_shape": [16]}, r"input_shape=\[16\]: the RNN expects a sequence \[time, features\].*model=mlp"),
    ({"cell": "rnn"}, r"cell='rnn': expected one of \['gru', 'lstm'\]"),
    ({"readout": "max"}, r"readout='max': expected one of \['last', 'mean'\]"),
    ({"hidden_size": 0}, r"hidden_size=0.*expected each >= 1"),
    ({"num_layers": 0}, r"num_layers=0.*expected each >= 1"),
    ({"dropout": 1.0}, r"dropout=1.0: expected a probability in \[0, 1\)"),
])
def test_bad_arguments_are_refused_with_what_is_allowed(kwargs, match):
    args = {"input_shape": [8, 8], "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        RNN(**args)


def test_single_layer_dropout_is_applied_before_the_head_only():
    net = RNN([4, 2], 2, num_layers=1, dropout=0.3)  # torch would warn (an error here) for inter-layer dropout
    assert net.rnn.dropout == 0.0 and net.head[0].p == 0.3
    assert RNN([4, 2], 2, num_layers=2, dropout=0.3).rnn.dropout == 0.3


def test_the_rnn_config_takes_keels_shapes_and_checks_clean():
    net = {"_target_": "keel.models.nets.RNN", "input_shape": None, "num_classes": None, "cell": "lstm",
           "hidden_size": 16, "num_layers": 1, "bidirectional": False, "dropout": 0.0, "readout": "last"}
    assert net_problems(net) == []
    args = net_arguments(net, [8, 8], 10)
    assert args["input_shape"] == [8, 8] and args["num_classes"] == 10
    (problem,) = net_problems({**net, "hidden": [64]})  # the MLP's key: the RNN's width is hidden_size
    assert problem.startswith("model.net.hidden: not an argument of keel.models.nets.RNN")


def test_rnn_yaml_builds_the_documented_net(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("data=digits_seq", "model=rnn")
    net = cfg.model.net
    assert list(net.input_shape) == [8, 8] and net.num_classes == 10  # from the data contract
    built = instantiate(net)
    assert isinstance(built.rnn, torch.nn.GRU) and built.rnn.hidden_size == 64 and built.readout == "last"


class _Logits(torch.nn.Module):
    """The logits alone as the model's one output (the net is under test, not a task's head)."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor]:
        return (z,)


@pytest.mark.parametrize("cell,int8_op,left", [("gru", "GRU", ["GRU"]), ("lstm", "DynamicQuantizeLSTM", [])])
def test_export_has_a_dynamic_batch_parity_and_names_what_int8_leaves_float32(tmp_path, cell, int8_op, left):
    import numpy as np
    import onnx

    from keel.export.onnx import InferenceModel, export_onnx
    from keel.export.quantize import float32_ops, quantize_onnx
    from keel.export.runtime import run, session
    from keel.models.nets import Standardize

    torch.manual_seed(0)
    net = RNN([8, 3], 4, cell=cell, hidden_size=16, num_layers=2, bidirectional=True)
    model = InferenceModel(Standardize([0.0] * 3, [2.0] * 3, 1), net, _Logits()).eval()
    io = export_onnx(model, torch.randn(2, 8, 3), tmp_path / "m.onnx", output_names=("logits",))
    assert io["inputs"][0]["shape"] == ["batch", 8, 3]  # the contract fixes T; the batch is free
    x = np.random.default_rng(0).normal(size=(7, 8, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy()
    (got,) = run(session(tmp_path / "m.onnx"), x)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert cell.upper() in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}  # one fused op

    quantize_onnx(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", "auto")
    assert int8_op in {n.op_type for n in onnx.load(str(tmp_path / "m.int8.onnx")).graph.node}
    notes = float32_ops(tmp_path / "m.int8.onnx")
    assert sorted(notes) == left
    if left:
        assert notes["GRU"].startswith("ONNX Runtime has no int8 GRU kernel") and "model.net.cell=lstm" in notes["GRU"]
