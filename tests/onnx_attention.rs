//! ONNX Attention and RotaryEmbedding against onnxruntime (models and outputs written by
//! tests/fixtures/onnx/gen_attention.py into tests/fixtures/onnx/attention/), gradients of
//! the imported compositions against finite differences (the point of importing them as
//! graph ops: fine-tuning imported transformer layers), and the refusals' messages. The
//! onnx package's node cases (tests/onnx_node.rs) cover the remaining variants.

mod common;

use common::onnx::{check_fixture, fixture_in};
use common::{check_finite_differences, devices, uniform, Feed};
use wgrad::onnx::{Imported, Model, Weights};
use wgrad::{autodiff::grad, io::read_npy, DType, Device, Op, Tensor, Var};

fn import(name: &str) -> Imported {
    Model::load(fixture_in("attention", &format!("{name}.onnx")))
        .expect("load")
        .import(&[], Weights::Constants)
        .unwrap_or_else(|e| panic!("{name}: import: {e}"))
}

/// The graph input named `name`.
fn input_var(m: &Imported, name: &str) -> Var {
    let id = m
        .graph
        .nodes()
        .iter()
        .position(|n| matches!(&n.op, Op::Input(s) if s == name))
        .unwrap_or_else(|| panic!("no input {name}"));
    m.graph.var(id).expect("var")
}

/// The fixture's feeds: the `real` ones differentiated, other floats held fixed, integer
/// ones (positions) as i32.
fn feeds(name: &str, m: &Imported, real: &[&str]) -> Vec<(String, Feed)> {
    m.inputs
        .iter()
        .map(|i| {
            let t = read_npy(
                fixture_in("attention", &format!("{name}.in.{i}.npy")),
                &Device::cpu(),
            )
            .expect("npy");
            let s = t.shape().to_vec();
            if t.dtype() == DType::I32 {
                return (i.clone(), Feed::Labels(t.to_vec::<i32>().expect("i32"), s));
            }
            let v: Vec<f64> = t
                .to_vec::<f32>()
                .expect("f32 feed")
                .iter()
                .map(|&x| x as f64)
                .collect();
            let f = if real.contains(&i.as_str()) {
                Feed::Real(v, s)
            } else {
                Feed::Fixed(v, s)
            };
            (i.clone(), f)
        })
        .collect()
}

/// `Σ y·R` for fixed R in [0.5, 1.5): every output element weighs differently.
fn weighted_sum(y: &Var, seed: u64) -> Var {
    let n: usize = y.shape().iter().product();
    let r = Tensor::from_slice(&Device::cpu(), &uniform(seed, n, 0.5, 1.5), y.shape()).unwrap();
    y.mul(&y.graph().constant(&r).unwrap())
        .unwrap()
        .sum()
        .unwrap()
}

#[test]
fn gqa_with_cache_causal_softcap_and_runtime_mask_matches_onnxruntime() {
    for w in [Weights::Params, Weights::Constants] {
        check_fixture("attention", "gqa_cache_softcap", &[], w, 1e-5, 1e-4);
    }
}

#[test]
fn mqa_with_a_boolean_mask_matches_onnxruntime() {
    check_fixture(
        "attention",
        "mqa_bool_mask",
        &[],
        Weights::Constants,
        1e-5,
        1e-4,
    );
}

#[test]
fn rotary_embedding_with_runtime_positions_matches_onnxruntime() {
    check_fixture("attention", "rotary", &[], Weights::Constants, 1e-5, 1e-4);
}

/// d(Σ Y·R)/dQ through the imported Attention (3-D, grouped heads, past cache, causal,
/// softcap, a runtime mask with a fully masked row) against central differences in f64;
/// the masked query's gradient is exactly 0 (no NaN leaks from its empty softmax), and the
/// GPU's f32 gradient matches the CPU reference's.
#[test]
fn attention_gradient_wrt_q_matches_finite_differences() {
    let name = "gqa_cache_softcap";
    let m = import(name);
    let q = input_var(&m, "Q");
    let loss = weighted_sum(&m.outputs[0].1, 7);
    let dq = grad(&loss, &[&q]).expect("grad");
    let f = feeds(name, &m, &["Q"]);
    let analytic = check_finite_differences(name, &m.graph, &loss, &dq, &f);
    // Q is (1, 3, 8): query 0 (the first 8 values) is masked out entirely.
    assert!(
        analytic[0][..8].iter().all(|&x| x == 0.0),
        "{:?}",
        analytic[0]
    );
    assert!(analytic[0][8..].iter().any(|&x| x.abs() > 1e-3));
    let named: Vec<(String, Tensor)> = f
        .iter()
        .map(|(n, feed)| {
            let (Feed::Real(v, s) | Feed::Fixed(v, s)) = feed else {
                unreachable!()
            };
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            (
                n.clone(),
                Tensor::from_slice(&Device::cpu(), &v, s).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let runs: Vec<Vec<f32>> = devices()
        .iter()
        .map(|d| {
            common::run_compiled(d, &m.graph, &[&dq[0]], &refs)
                .0
                .remove(0)
        })
        .collect();
    let want: Vec<f32> = analytic[0].iter().map(|&x| x as f32).collect();
    for (d, got) in devices().iter().zip(&runs) {
        common::assert_close(&format!("dQ on {}", d.name()), got, &want, 1e-5, 1e-4);
    }
}

/// The host-built mask path (a boolean initializer with a fully false row), one kv head
/// shared by two query heads: gradients w.r.t. Q, K and V against finite differences.
#[test]
fn attention_gradients_with_a_boolean_mask_match_finite_differences() {
    let name = "mqa_bool_mask";
    let m = import(name);
    let vars: Vec<Var> = ["Q", "K", "V"].iter().map(|n| input_var(&m, n)).collect();
    let loss = weighted_sum(&m.outputs[0].1, 11);
    let refs: Vec<&Var> = vars.iter().collect();
    let grads = grad(&loss, &refs).expect("grad");
    let f = feeds(name, &m, &["Q", "K", "V"]);
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Q", "K", "V"], "feed order");
    check_finite_differences(name, &m.graph, &loss, &grads, &f);
}

#[test]
fn rotary_embedding_gradient_matches_finite_differences() {
    let name = "rotary";
    let m = import(name);
    let x = input_var(&m, "x");
    let loss = weighted_sum(&m.outputs[0].1, 3);
    let dx = grad(&loss, &[&x]).expect("grad");
    // The positions are an i32 graph input here (fed as such).
    let f = feeds(name, &m, &["x"]);
    check_finite_differences(name, &m.graph, &loss, &dx, &f);
}

fn import_error(name: &str) -> String {
    match Model::load(fixture_in("attention", &format!("{name}.onnx")))
        .expect("load")
        .import(&[], Weights::Constants)
    {
        Ok(_) => panic!("{name}: import must fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn head_counts_that_do_not_divide_are_refused_with_the_shapes() {
    let msg = import_error("bad_heads");
    assert!(msg.contains("(Attention)"), "{msg}");
    assert!(
        msg.contains("q heads 3 are not a multiple of kv heads 2"),
        "{msg}"
    );
    assert!(msg.contains("[1, 3, 2, 2]"), "{msg}");
}

#[test]
fn a_mask_that_does_not_broadcast_is_refused_with_the_shapes() {
    let msg = import_error("bad_mask");
    assert!(msg.contains("(Attention)"), "{msg}");
    assert!(msg.contains("attn_mask [5, 6]"), "{msg}");
    assert!(msg.contains("[1, 2, 4, 6]"), "{msg}");
}
