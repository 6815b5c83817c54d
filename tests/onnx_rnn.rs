//! ONNX RNN, GRU and LSTM beyond the node cases (tests/fixtures/onnx/gen_rnn.py), against
//! onnxruntime: sequence_lens masking in both directions, linear_before_reset with clip,
//! custom activations with alpha and beta, batch-major layout, input_forget; gradients
//! through a masked bidirectional LSTM against finite differences.

mod common;

use common::onnx::{
    assert_gpu_gradients, check_fixture, fixture_in, input_var, weighted_output_loss,
};
use common::{check_finite_differences, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::onnx::{Model, Weights};
use wgrad::Var;

const MODELS: &[&str] = &[
    "lstm_seq_lens",
    "gru_lbr_clip",
    "gru_activations",
    "rnn_layout1",
    "lstm_layout1_input_forget",
];

#[test]
fn recurrent_layers_match_onnxruntime() {
    for name in MODELS {
        for weights in [Weights::Params, Weights::Constants] {
            check_fixture("rnn", name, &[], weights, 1e-5, 1e-4);
        }
    }
}

#[test]
fn gradients_flow_through_a_masked_bidirectional_lstm() {
    // d/dX, d/dh0, d/dc0 of every output (Y, Y_h, Y_c), with sequence lengths (4, 1, 3):
    // masked steps must pass the state's gradient straight through.
    let imported = Model::load(fixture_in("rnn", "lstm_seq_lens.onnx"))
        .expect("load")
        .import(&[], Weights::Params)
        .expect("import");
    let g = imported.graph.clone();
    let names = ["X", "h0", "c0"];
    let xs: Vec<Var> = names.iter().map(|n| input_var(&g, n)).collect();
    let loss = weighted_output_loss(&g, &imported.outputs, 9);
    let grads = grad(&loss, &xs.iter().collect::<Vec<_>>()).expect("grad");
    let values: Vec<Vec<f32>> = xs
        .iter()
        .enumerate()
        .map(|(k, x)| uniform(70 + k as u64, x.shape().iter().product(), -1.0, 1.0))
        .collect();
    let feeds: Vec<(String, Feed)> = names
        .iter()
        .zip(&xs)
        .zip(&values)
        .map(|((n, x), v)| (n.to_string(), Feed::real(v, x.shape())))
        .collect();
    let analytic = check_finite_differences("masked LSTM", &g, &loss, &grads, &feeds);
    // X past an entry's length gets no gradient, and no other entry of dX is zero.
    let dx = &analytic[0];
    let (batch, input, lens) = (3, 5, [4, 1, 3]);
    for t in 0..4 {
        for b in 0..batch {
            let part = &dx[(t * batch + b) * input..][..input];
            let masked = t >= lens[b];
            assert_eq!(
                part.iter().all(|&d| d == 0.0),
                masked,
                "dX at t={t} b={b}: {part:?}"
            );
        }
    }
    assert_gpu_gradients("masked LSTM", &g, &grads, &names, &xs, &values, &analytic);
}
