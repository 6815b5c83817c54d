//! `wgrad::nn`: layers build the expected graphs, a small model trains, and
//! parameters round-trip through safetensors by name.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::nn::{
    load_params, save_params, Activation, BatchNorm2d, Conv2dLayer, Flatten, LayerNorm, Linear,
    Module, MultiHeadAttention, Sequential,
};
use wgrad::{Conv2d, Device, Error, Graph, Optimizer, Tensor};

#[test]
fn layers_have_named_parameters_and_shapes() {
    let g = Graph::new();
    let model = Sequential::new(vec![
        Box::new(Conv2dLayer::new(
            &g,
            "c",
            3,
            4,
            Conv2d::new(3, 3).padding(1),
            1,
        )),
        Box::new(BatchNorm2d::new(&g, "bn", 4, 1e-5)),
        Box::new(Activation::Gelu),
        Box::new(Flatten),
        Box::new(Linear::new(&g, "fc", 4 * 5 * 5, 6, 2)),
        Box::new(LayerNorm::new(&g, "ln", 6, 1e-5)),
        Box::new(Activation::Tanh),
    ]);
    let y = model.forward(&g.input("x", &[2, 3, 5, 5])).unwrap();
    assert_eq!(y.shape(), &[2, 6]);
    let names = model.param_names();
    assert_eq!(
        names,
        [
            "c.weight",
            "c.bias",
            "bn.gamma",
            "bn.beta",
            "fc.weight",
            "fc.bias",
            "ln.gamma",
            "ln.beta"
        ]
    );
    let mha = MultiHeadAttention::new(&g, "attn", 8, 2, true, 3);
    assert_eq!(
        mha.forward(&g.input("s", &[2, 5, 8])).unwrap().shape(),
        &[2, 5, 8]
    );
    assert_eq!(mha.param_names(), ["attn.q", "attn.k", "attn.v", "attn.o"]);
    assert!(matches!(
        Flatten.forward(&g.input("z", &[])).unwrap_err(),
        Error::Shape { op: "flatten", .. }
    ));
}

fn regression(n: usize) -> (Graph, Sequential, wgrad::Var, wgrad::Var) {
    let g = Graph::new();
    let model = Sequential::new(vec![
        Box::new(Linear::new(&g, "l1", 3, 16, 1)),
        Box::new(Activation::Relu),
        Box::new(Linear::new(&g, "l2", 16, 1, 2)),
    ]);
    let pred = model.forward(&g.input("x", &[n, 3])).unwrap();
    let loss = pred.mse(&g.input("y", &[n, 1])).unwrap();
    (g, model, pred, loss)
}

#[test]
fn a_model_trains_and_its_parameters_round_trip() {
    let n = 32;
    let xs = uniform(1, n * 3, -1.0, 1.0);
    let ys: Vec<f32> = xs
        .chunks(3)
        .map(|r| r[0] - 2.0 * r[1] + 0.5 * r[2])
        .collect();
    let path = std::env::temp_dir().join(format!("wgrad-nn-{}.safetensors", std::process::id()));
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let (g, model, pred, loss) = regression(n);
        let step = dev.compile(&g, &[&loss], Optimizer::adam(0.01)).unwrap();
        let x = Tensor::from_slice(&dev, &xs, &[n, 3]).unwrap();
        let y = Tensor::from_slice(&dev, &ys, &[n, 1]).unwrap();
        let first = step.run(&[("x", &x), ("y", &y)]).unwrap()[0]
            .item()
            .unwrap();
        let mut last = first;
        for _ in 0..200 {
            last = step.run(&[("x", &x), ("y", &y)]).unwrap()[0]
                .item()
                .unwrap();
        }
        assert!(
            last < first * 0.1,
            "loss {first} -> {last} on {}",
            dev.name()
        );
        save_params(&step, &model.param_names(), &path).unwrap();
        // A fresh model of the same shape predicts the same after loading.
        let (g2, model2, pred2, _) = regression(n);
        let fresh = dev.compile(&g2, &[&pred2], None).unwrap();
        load_params(&fresh, &model2.param_names(), &path).unwrap();
        let trained = dev.compile(&g, &[&pred], None).unwrap();
        for name in model.param_names() {
            trained
                .set_param(&name, &step.param(&name).unwrap())
                .unwrap();
        }
        let a = fresh.run(&[("x", &x)]).unwrap()[0].to_vec::<f32>().unwrap();
        let b = trained.run(&[("x", &x)]).unwrap()[0]
            .to_vec::<f32>()
            .unwrap();
        assert_close("reloaded predictions", &a, &b, 0.0, 0.0);
        let missing = vec!["l3.weight".to_string()];
        let e = load_params(&fresh, &missing, &path).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { op: "load_params", detail } if detail.contains("l3.weight")),
            "{e}"
        );
    }
    let _ = std::fs::remove_file(&path);
}
