//! ONNX Einsum (opset 12): NumPy's `einsum` equation on graph values, composed from
//! ordinary differentiable ops, so it needs no primitive of its own and trains:
//!
//! 1. each term's repeated labels (`ii`) take the diagonal: a constant `i == j` mask applied
//!    with `KeepWhere` (no `inf·0 = NaN`), then a sum over the second axis;
//! 2. a label no other term and not the output uses is summed away;
//! 3. terms contract pairwise, left to right, as one batched product: labels both sides keep
//!    are the batch, labels used by neither the rest nor the output are the inner dim, the
//!    rest are the product's rows (left) and columns (right);
//! 4. the result is summed over what the output leaves out and permuted to its order.
//!
//! `...` stands for the same broadcast dims in every term (NumPy's rules, right-aligned);
//! without `->` the output is the ellipsis dims, then every label used once, alphabetically.

use std::collections::HashMap;

use super::{attr_string, err, input, one, Env, OpFn, OpResult};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::BinaryOp as B;
use crate::shape::broadcast_shapes;
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("Einsum", einsum)];

type Res<T> = std::result::Result<T, String>;

/// A label: a letter, or the k-th broadcast dim of the ellipsis counted from its right end.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Label {
    Letter(u8),
    Ellipsis(usize),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Letter(c) => write!(f, "'{}'", *c as char),
            Label::Ellipsis(k) => write!(f, "ellipsis dim {k} from the right"),
        }
    }
}

/// One term as written: its letters, with the ellipsis's position among them if present.
struct Term {
    letters: Vec<u8>,
    ellipsis: Option<usize>,
}

fn parse_term(t: &str) -> Res<Term> {
    let mut letters = Vec::new();
    let mut ellipsis = None;
    let mut rest = t;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            if ellipsis.is_some() {
                return Err(format!("term '{t}' has two ellipses"));
            }
            ellipsis = Some(letters.len());
            rest = r;
            continue;
        }
        let c = rest.as_bytes()[0];
        if !c.is_ascii_alphabetic() {
            return Err(format!(
                "term '{t}' has '{}', not a letter",
                rest.chars().next().unwrap_or(' ')
            ));
        }
        letters.push(c);
        rest = &rest[1..];
    }
    Ok(Term { letters, ellipsis })
}

impl Term {
    /// The labels of a term applied to `rank` dims (its ellipsis takes what the letters
    /// leave, numbered from the right so terms of different ranks line up).
    fn labels(&self, rank: usize, what: &str) -> Res<Vec<Label>> {
        let n = self.letters.len();
        let letter = |c: &u8| Label::Letter(*c);
        match self.ellipsis {
            None if rank == n => Ok(self.letters.iter().map(letter).collect()),
            None => Err(format!(
                "{what} has rank {rank} but its term names {n} dims"
            )),
            Some(_) if rank < n => Err(format!(
                "{what} has rank {rank}, fewer than the {n} letters of its term"
            )),
            Some(at) => {
                let e = rank - n;
                let mut out: Vec<Label> = self.letters[..at].iter().map(letter).collect();
                out.extend((0..e).map(|k| Label::Ellipsis(e - 1 - k)));
                out.extend(self.letters[at..].iter().map(letter));
                Ok(out)
            }
        }
    }
}

/// A graph value with one label per dim.
struct Labeled {
    labels: Vec<Label>,
    v: Var,
}

impl Labeled {
    fn pos(&self, l: Label) -> Option<usize> {
        self.labels.iter().position(|&m| m == l)
    }

    /// Sums away every label `keep` rejects.
    fn sum_except(mut self, keep: impl Fn(Label) -> bool) -> crate::Result<Labeled> {
        for a in (0..self.labels.len()).rev() {
            if !keep(self.labels[a]) {
                self.v = self.v.sum_axis(a as isize, false)?;
                self.labels.remove(a);
            }
        }
        Ok(self)
    }

    /// Permutes to the labels in `order` (each present once).
    fn permute_to(self, order: &[Label]) -> crate::Result<Labeled> {
        let axes: Vec<usize> = order.iter().map(|&l| self.pos(l).unwrap_or(0)).collect();
        let v = if axes.iter().enumerate().all(|(i, &a)| i == a) {
            self.v
        } else {
            self.v.permute(&axes)?
        };
        Ok(Labeled {
            labels: order.to_vec(),
            v,
        })
    }
}

/// Takes the diagonal of every repeated label (step 1 of the module comment).
fn diagonals(env: &Env, mut t: Labeled) -> Res<Labeled> {
    loop {
        let repeat = (0..t.labels.len())
            .find_map(|q| (0..q).find(|&p| t.labels[p] == t.labels[q]).map(|p| (p, q)));
        let Some((p, q)) = repeat else {
            return Ok(t);
        };
        let shape = t.v.shape().to_vec();
        let n = shape[p];
        if shape[q] != n {
            return Err(format!(
                "label {} stands for dims of sizes {n} and {} in one term",
                t.labels[p], shape[q]
            ));
        }
        if n > 1 << 24 {
            return Err(format!(
                "diagonal of length {n} is past 2^24: not exact as f32 positions"
            ));
        }
        // The mask `index along p == index along q`, from two constants of n elements.
        let along = |axis: usize| -> Res<Var> {
            let mut dims = vec![1; shape.len()];
            dims[axis] = n;
            let idx: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let t = Tensor::from_slice(&Device::cpu(), &idx, &dims).map_err(err)?;
            env.graph.constant(&t).map_err(err)
        };
        let (rows, cols) = (along(p)?, along(q)?);
        let v = (|| {
            let mask = rows.binary(&cols, B::Eq)?;
            t.v.binary(&mask, B::KeepWhere)?.sum_axis(q as isize, false)
        })()
        .map_err(err)?;
        t.labels.remove(q);
        t.v = v;
    }
}

/// The size of every label over all terms: letters must agree, ellipsis dims broadcast.
fn label_sizes(terms: &[Labeled]) -> Res<HashMap<Label, usize>> {
    let mut sizes: HashMap<Label, usize> = HashMap::new();
    for t in terms {
        for (&l, &d) in t.labels.iter().zip(t.v.shape()) {
            let s = sizes.entry(l).or_insert(d);
            if *s == d {
                continue;
            }
            match l {
                Label::Ellipsis(_) if d == 1 => {}
                Label::Ellipsis(_) if *s == 1 => *s = d,
                _ => {
                    return Err(format!(
                        "label {l} stands for dims of sizes {} and {d}",
                        sizes[&l]
                    ))
                }
            }
        }
    }
    Ok(sizes)
}

/// `a` and `b` contracted into one value with the labels `needed` asks for (step 3).
fn contract(a: Labeled, b: Labeled, needed: &dyn Fn(Label) -> bool) -> crate::Result<Labeled> {
    let in_b = |l: Label| b.pos(l).is_some();
    let in_a = |l: Label| a.pos(l).is_some();
    let batch: Vec<Label> = a
        .labels
        .iter()
        .copied()
        .filter(|&l| in_b(l) && needed(l))
        .collect();
    let inner: Vec<Label> = a
        .labels
        .iter()
        .copied()
        .filter(|&l| in_b(l) && !needed(l))
        .collect();
    let rows: Vec<Label> = a.labels.iter().copied().filter(|&l| !in_b(l)).collect();
    let cols: Vec<Label> = b.labels.iter().copied().filter(|&l| !in_a(l)).collect();
    // Shared labels broadcast to the larger size (only ellipsis dims differ, one being 1).
    let mut sizes: HashMap<Label, usize> = HashMap::new();
    for t in [&a, &b] {
        for (&l, &d) in t.labels.iter().zip(t.v.shape()) {
            let s = sizes.entry(l).or_insert(d);
            if *s == 1 {
                *s = d; // a 1 broadcasts to the other size, 0 included
            }
        }
    }
    let size = |l: Label| sizes[&l];
    let prod = |ls: &[Label]| {
        let dims: Vec<usize> = ls.iter().map(|&l| size(l)).collect();
        crate::shape::checked_numel("Einsum", &dims)
    };
    let (nb, m, k, n) = (prod(&batch)?, prod(&rows)?, prod(&inner)?, prod(&cols)?);
    let order_a: Vec<Label> = batch.iter().chain(&rows).chain(&inner).copied().collect();
    let order_b: Vec<Label> = batch.iter().chain(&inner).chain(&cols).copied().collect();
    let full = |t: Labeled, order: &[Label]| -> crate::Result<Var> {
        let t = t.permute_to(order)?;
        let want: Vec<usize> = order.iter().map(|&l| size(l)).collect();
        if t.v.shape() == want.as_slice() {
            Ok(t.v)
        } else {
            t.v.broadcast_to(&want)
        }
    };
    let va = full(a, &order_a)?.reshape(&[nb, m, k])?;
    let vb = full(b, &order_b)?.reshape(&[nb, k, n])?;
    let labels: Vec<Label> = batch.iter().chain(&rows).chain(&cols).copied().collect();
    let dims: Vec<usize> = labels.iter().map(|&l| size(l)).collect();
    let v = va.matmul(&vb)?.reshape(&dims)?;
    Ok(Labeled { labels, v })
}

/// Einsum: see the module comment.
fn einsum(env: &Env, node: &NodeProto) -> OpResult {
    let eq: String = attr_string(node, "equation")
        .ok_or("missing attribute 'equation'")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (lhs, out) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(parse_term(r)?)),
        None => (eq.as_str(), None),
    };
    let specs = lhs.split(',').map(parse_term).collect::<Res<Vec<_>>>()?;
    let count = node.input.len();
    if count == 0 {
        return Err("needs at least one input".into());
    }
    if specs.len() != count {
        return Err(format!(
            "equation '{eq}' has {} input terms for {count} inputs",
            specs.len()
        ));
    }
    let mut terms = Vec::with_capacity(count);
    for (i, spec) in specs.iter().enumerate() {
        let v = input(env, node, i)?;
        let labels = spec.labels(v.shape().len(), &format!("input {i} {:?}", v.shape()))?;
        terms.push(diagonals(env, Labeled { labels, v })?);
    }
    let sizes = label_sizes(&terms)?;
    let ellipsis_rank = sizes
        .keys()
        .filter_map(|l| match l {
            Label::Ellipsis(k) => Some(k + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let out_labels: Vec<Label> = match &out {
        Some(o) => {
            // Broadcast dims the output does not name are summed, as NumPy does.
            let labels = o.labels(
                o.letters.len() + o.ellipsis.map_or(0, |_| ellipsis_rank),
                "the output",
            )?;
            for (i, l) in labels.iter().enumerate() {
                if labels[..i].contains(l) {
                    return Err(format!("output label {l} appears twice in '{eq}'"));
                }
                if !sizes.contains_key(l) {
                    return Err(format!("output label {l} is in no input term of '{eq}'"));
                }
            }
            labels
        }
        None => {
            let mut once: Vec<Label> = Vec::new();
            for &l in sizes.keys() {
                if let Label::Letter(_) = l {
                    let uses: usize = specs
                        .iter()
                        .map(|s| s.letters.iter().filter(|&&c| Label::Letter(c) == l).count())
                        .sum();
                    if uses == 1 {
                        once.push(l);
                    }
                }
            }
            once.sort();
            (0..ellipsis_rank)
                .rev()
                .map(Label::Ellipsis)
                .chain(once)
                .collect()
        }
    };
    let y = (|| {
        // Whether label l is used by the output or a term from index `from` on.
        let used_after = |l: Label, from: usize, terms: &[Labeled]| {
            out_labels.contains(&l) || terms[from..].iter().any(|t| t.pos(l).is_some())
        };
        let mut rest = terms;
        let mut acc = rest.remove(0);
        acc = acc.sum_except(|l| used_after(l, 0, &rest))?;
        while !rest.is_empty() {
            let next = rest.remove(0);
            let next = next.sum_except(|l| used_after(l, 0, &rest) || acc.pos(l).is_some())?;
            acc = acc.sum_except(|l| used_after(l, 0, &rest) || next.pos(l).is_some())?;
            acc = contract(acc, next, &|l| used_after(l, 0, &rest))?;
        }
        let acc = acc.sum_except(|l| out_labels.contains(&l))?;
        // Output ellipsis dims a term had as 1 against a larger one elsewhere broadcast.
        let want: Vec<usize> = out_labels.iter().map(|l| sizes[l]).collect();
        let acc = acc.permute_to(&out_labels)?;
        if acc.v.shape() == want.as_slice() {
            Ok(acc.v)
        } else {
            let b = broadcast_shapes("Einsum", acc.v.shape(), &want)?;
            acc.v.broadcast_to(&b)
        }
    })()
    .map_err(err)?;
    one(y)
}
