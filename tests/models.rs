//! Ready-made networks: ResNet-50's topology against torchvision's published figures.

use wgrad::graph::Op;
use wgrad::nn::models::resnet50;
use wgrad::nn::Module;
use wgrad::Graph;

/// torchvision's `resnet50()` has 25,557,032 parameters (sum of `p.numel()`); the same
/// layers here (bias-free convolutions, batch norm's scale and shift, the 2048 → 1000
/// linear) give the same count, and a 224×224 image gives 1000 logits.
#[test]
fn resnet50_matches_torchvisions_parameter_count_and_shapes() {
    let g = Graph::new();
    let model = resnet50(&g, 1000, false).unwrap();
    let logits = model.forward(&g.input("x", &[2, 3, 224, 224])).unwrap();
    assert_eq!(logits.shape(), &[2, 1000]);
    let params: usize = g
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, Op::Param(..)))
        .map(|n| n.shape.iter().product::<usize>())
        .sum();
    assert_eq!(params, 25_557_032);
    // 53 batch norms, each with two running statistics.
    assert_eq!(model.state_names().len(), 2 * 53);
    assert_eq!(model.param_names().len(), 53 + 2 * 53 + 2);
    // Smaller images run through the same stages (a 1×1 final map at 32×32; training needs
    // a batch of two there, as batch norm needs two values per channel).
    let g = Graph::new();
    let model = resnet50(&g, 10, true).unwrap();
    let logits = model.forward(&g.input("x", &[2, 3, 32, 32])).unwrap();
    assert_eq!(logits.shape(), &[2, 10]);
}
