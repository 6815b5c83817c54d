//! Matrix products with NumPy's `matmul` semantics, and transposed-operand
//! variants so backward passes need no transpose copies.
//!
//! Shape rule: `op(A)` is `(.., M, K)`, `op(B)` is `(.., K, N)`, the result is
//! `(batch.., M, N)` where `batch` is the NumPy broadcast of both leading dims.
//! A 1-D left operand is a `(1, K)` row and a 1-D right operand a `(K, 1)`
//! column, the added dim removed from the result (1-D · 1-D is a rank-0 dot).
//! `op` transposes the last two dims of the stored tensor when asked (a 1-D
//! operand is the same vector either way). K = 0 gives zeros, as in NumPy.
//! CPU reference: `matmul_forward`, accumulated in f64.
//! GPU: `shaders/matmul.wgsl`, one of four kernels per adapter (`MatmulVariant`).
//! The register-blocked kernels load aligned vec4s only: an operand whose
//! stored rows are not a multiple of 4 long is first copied into padded rows.
//!
//! Measured on lavapipe (Mesa 22.3, 2 cores), 1024³: subgroup ~40-47 GFLOP/s,
//! blocked ~15-17, tiled ~3 (barriers are expensive on a CPU).

use std::sync::Arc;

use crate::device::{Device, DeviceInner};
use crate::error::{Error, Result};
use crate::gpu::pool::GpuBuffer;
use crate::gpu::{Binding, BufArg, Dispatch, GpuContext, Kernel};
use crate::ops::matmul_plan::{matmul_forward, MatmulPlan};
use crate::ops::matmul_variant::{resolve, small_takes};
pub use crate::ops::matmul_variant::{MatmulVariant, MATMUL_ENV};
use crate::ops::texture_reads::reads_textures;
use crate::ops::{gpu_output, grid_1d, pack_dims};
use crate::tensor::Tensor;
use crate::DType;

/// The whole file, subgroup kernel included: needs a device with subgroups.
pub(crate) const SHADER: Kernel = Kernel {
    name: "matmul",
    source: include_str!("../../shaders/matmul.wgsl"),
};

/// Where the subgroup kernel starts in the file; what comes before compiles anywhere.
const SUBGROUP_MARKER: &str = "// ---- subgroup kernels";

/// The kernels that need no subgroup support (everything before the marker).
fn base_kernel() -> Kernel {
    let source = SHADER
        .source
        .split(SUBGROUP_MARKER)
        .next()
        .unwrap_or(SHADER.source);
    Kernel {
        name: "matmul.base",
        source,
    }
}

/// Where the subgroup kernels' panel reads start (the file's tail), which the texture module
/// replaces.
const PANEL_READS_MARKER: &str = "// ---- panel reads";

/// The subgroup kernels' panel reads from textures (`MatmulVariant::SubgroupTextures`).
const TEXTURE_READS: &str = include_str!("../../shaders/matmul_texture_reads.wgsl");

/// The block of storage reads of any alignment (`load_a_any`, `load_b_any`: gemv's and
/// matmul_forward_small's) that the texture module cuts out, [`TEXTURE_READS`] defining
/// both over textures.
const ANY_READS_MARKERS: [&str; 2] = [
    "// ---- any-alignment reads",
    "// ---- end of any-alignment reads",
];

/// The whole file with its storage panel reads replaced by [`TEXTURE_READS`] and its storage
/// any-alignment reads cut out: the `subgroup_tex` kernels and gemv (the same entry points,
/// A and B bound as textures).
pub(crate) fn texture_kernel() -> Kernel {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let source = SOURCE.get_or_init(|| {
        let head = SHADER
            .source
            .split(PANEL_READS_MARKER)
            .next()
            .unwrap_or(SHADER.source);
        let head = crate::gpu::texture::replace_block(head, ANY_READS_MARKERS, "");
        format!("{head}{TEXTURE_READS}")
    });
    Kernel {
        name: "matmul.texture",
        source,
    }
}

/// Output tile of one workgroup (TILE × TILE), in every kernel but the subgroup ones.
const TILE: usize = 64;

/// Rows of the subgroup kernels' output tile (SUBGROUP_TILE_M × TILE): one subgroup of 8
/// lanes per workgroup. Two subgroups per 64×64 tile ran level on large products within a
/// noisy host's spread (1024³ 59-98 ms against 59-75, ResNet-50 inference 360-456 ms
/// against 364-417, lavapipe, alternated) and wasted half of each tile on products 32 rows
/// high, which the digits CNN and small batches are made of: its weight gradient (1024×32)ᵀ·(1024×144) took 1.03 ms against
/// 0.59 ms; 64×4096×64 (one tile) 2.0-2.7 ms against 0.93-0.96.
const SUBGROUP_TILE_M: usize = 32;

/// 32-row tiles from which a product whose last column tile holds 1 to 16 columns runs that
/// column on the edge kernels (`matmul_forward_subgroup_edge`, 128 x 16 tiles: see
/// matmul.wgsl): one edge tile does the work of one wide tile and replaces four.
const EDGE_MIN_TILES_M: usize = 4;

/// Whether the subgroup kernels run the last column tile of a product `tiles_m` 32-row tiles
/// high and N wide on the edge kernels: it holds 1 to 16 columns.
fn edge_column(tiles_m: usize, n: usize) -> bool {
    (1..=16).contains(&(n % TILE)) && tiles_m >= EDGE_MIN_TILES_M
}

/// Columns of C the subgroup kernels compute for an M × N product (per row, whole tiles):
/// N rounded up to 64, or to 16 past the last multiple of 64 where the edge kernels take the
/// last column tile. A cost model for callers that pick between products of different
/// shapes (the Winograd tile, `crate::ops::winograd`).
pub(crate) fn subgroup_columns(m: usize, n: usize) -> usize {
    match edge_column(m.div_ceil(SUBGROUP_TILE_M), n) {
        true => n / TILE * TILE + 16,
        false => n.next_multiple_of(TILE),
    }
}

/// `matmul_forward_small`'s tile for C at most [`SMALL_NARROW_N`] columns wide when 64-row
/// tiles would make fewer than [`SMALL_NARROW_BELOW`] workgroups: 32 rows (params word 15).
/// One workgroup runs on one core: a classifier's 64×512 · 512×10 was one workgroup,
/// 0.24-0.25 ms on lavapipe's 2 cores, and is 0.16 ms as two. With 8 workgroups already
/// (512×64 · 64×10), 32-row tiles were slower: 0.28 ms against 0.22-0.23.
const SMALL_NARROW_N: usize = 16;
const SMALL_NARROW_TILE_M: usize = 32;
const SMALL_NARROW_BELOW: usize = 4;

/// Multiply-adds up to which a product the register-blocked variant runs takes
/// `matmul_forward_small` (4x4 outputs per invocation, loads of any alignment, so no padded
/// copies). On lavapipe its pipeline compiles in ~0.26 s at the first dispatch against
/// ~0.45 s for the 8x8 kernel, and at this size it runs within ~0.2 ms of it per product
/// (MLP 64-128-10 step 2.85-3.19 ms against 2.68-3.34 ms): the first training step of a
/// small network is what a user waits for.
const SMALL_PRODUCT: usize = 1 << 21;

/// Rows of op(A) up to which a product takes `matmul_forward_gemv` on the software-adapter
/// kernels: ResNet-50's head (1×2048 · 2048×1000) went from 7-17 ms on the 64×64-tile
/// kernels to about 1 ms (lavapipe).
pub(crate) const GEMV_ROWS: usize = 4;

/// Lavapipe silently ends an invocation after 65,535 loop iterations (see
/// [`crate::gpu::LOOP_BUDGET`]), and every product kernel walks K inside one invocation, so a
/// long K is split into chunks that each stay within the budget: the chunks' partial products
/// are computed side by side in one dispatch and summed pairwise by a second
/// (`matmul_sum_splits`), which also applies the epilogue. The longest chunk per kernel
/// follows from the loop iterations one invocation takes per step along K, measured on
/// lavapipe 22.3 by products 4×K·K×4 left unsplit: the register-blocked and subgroup kernels
/// were right at K = 250,000 and wrong at 280,000 (one iteration per 4 along K: their inner
/// loops are unrolled); the tiled kernel was already wrong at K = 60,000 (its k-tile loops of
/// 4 and 16 count too: 21 iterations per 16 along K). The split runs on every adapter (a real
/// GPU has no such cap, but it is where a long K wants more workgroups anyway): its second
/// pass reads `chunks` × C, small beside the product once K passes the budget.
fn k_chunk_limit(entry: &str) -> usize {
    let budget = crate::gpu::LOOP_BUDGET;
    match entry {
        // 21 loop iterations per k-tile of 16.
        "matmul_forward_tiled" => budget / 21 * 16,
        // One iteration per step of 4.
        _ => budget * 4,
    }
}

/// Most chunks one pass of `matmul_sum_splits` adds (its pairwise cascade holds 16 levels).
const MAX_SPLITS_PER_PASS: usize = 4096;

/// Elements the partial products of one pass may take, at most (64 MiB of f32), unless one
/// partial (the size of C) is larger.
const PARTIALS_ELEMS: usize = 1 << 24;

std::thread_local! {
    static K_CHUNK_CAP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every product this thread records split into K chunks of at most `chunk`
/// (rounded down to a multiple of 16, at least 16): the split-K path on short products, for
/// tests and for measuring its cost. It only ever lowers the kernels' own limits.
pub fn with_k_chunk<R>(chunk: usize, f: impl FnOnce() -> R) -> R {
    let saved = K_CHUNK_CAP.with(|c| c.replace(Some((chunk / 16 * 16).max(16))));
    let r = f();
    K_CHUNK_CAP.with(|c| c.set(saved));
    r
}

/// The K chunk `entry` runs: its loop budget, or less under [`with_k_chunk`].
fn k_chunk(entry: &str) -> usize {
    let limit = k_chunk_limit(entry);
    K_CHUNK_CAP
        .with(|c| c.get())
        .map_or(limit, |cap| cap.min(limit))
}

/// Element-wise ops applied to a product as it is stored, fused by the graph executor
/// into the product kernels (see matmul.wgsl's `epilogue`), in this order:
/// `C·scale[row] + shift[row]` (per row of C: a convolution's output channel, as a folded
/// batch norm and a convolution's bias), `+ bias[col]` (a linear layer's bias), `+ residual`,
/// then ReLU, then `· [mask > 0]` (ReLU's gradient through the layer's output). Each part is
/// optional. Products past one binding and operands the kernels cannot take get them as
/// ordinary element-wise ops afterwards, which computes the same values.
///
/// Another product-like op adopts it by binding the same five operands after its output
/// (bindings 4-7, see matmul.wgsl) and calling the shader's `epilogue(v, o, m, n)` as it
/// stores element (m, n) at flat index o, with `params.flags` and `params.epi_rows` set by
/// [`Epilogue::flags`].
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// (M) values, any shape: multiplies row m of every output matrix.
    pub scale: Option<&'a Tensor>,
    /// (M) values, any shape: added to row m of every output matrix, after the scale.
    pub shift: Option<&'a Tensor>,
    /// (N) values, any shape: added to every row of C.
    pub bias: Option<&'a Tensor>,
    /// As many elements as C, in C's order: added after the biases (a residual connection).
    pub residual: Option<&'a Tensor>,
    /// `max(C, 0)` after the additions.
    pub relu: bool,
    /// As many elements as C: `C · [mask > 0]` (ReLU's gradient through the layer's output).
    /// Bound in the residual's place, so not both.
    pub mask: Option<&'a Tensor>,
    /// 0, or C's columns in groups of `group` come out as (N/group, M, group): a
    /// batch-folded convolution's product (F, N·L) as (N, F, L), the permute after it
    /// done by the kernel's stores. One output matrix only, and neither a residual nor a
    /// mask (they would be read in C's own order).
    pub group: usize,
}

/// Every flag bit of the epilogue in matmul.wgsl's `params.flags` (its `EPI_ANY`).
const EPILOGUE_BITS: u32 = 4 | 8 | 16 | 64 | 128 | 256;

impl Epilogue<'_> {
    /// Flag bits of matmul.wgsl's `params.flags` (4, 8, 16, 64, 128, 256).
    pub(crate) fn flags(&self) -> u32 {
        (self.bias.is_some() as u32) << 2
            | (self.relu as u32) << 3
            | (self.mask.is_some() as u32) << 4
            | (self.scale.is_some() as u32) << 6
            | (self.shift.is_some() as u32) << 7
            | (self.residual.is_some() as u32) << 8
    }

    /// The same ops as separate element-wise ops on a computed product `c` of `plan`,
    /// returned in the product's shape.
    fn apply(&self, c: Tensor, plan: &MatmulPlan) -> Result<Tensor> {
        self.apply_rows(c, (plan.m, plan.n))
    }

    /// [`Epilogue::apply`] on `c` seen as matrices of `m` rows and `n` columns (a
    /// convolution's (N, F, OH, OW): F rows of OH·OW), returned in `c`'s shape: the CPU
    /// reference of the convolution kernels' epilogues.
    pub(crate) fn apply_rows(&self, c: Tensor, (m, n): (usize, usize)) -> Result<Tensor> {
        if self.flags() == 0 && self.group == 0 {
            return Ok(c);
        }
        let shape = c.shape().to_vec();
        // (matrices, M, N): the per-row operands broadcast as (M, 1), the others as given.
        let mats = c.numel() / (m * n).max(1);
        let mut c = c.reshape(&[mats, m, n])?;
        if let Some(a) = self.scale {
            c = c.mul(&a.reshape(&[m, 1])?)?;
        }
        if let Some(s) = self.shift {
            c = c.add(&s.reshape(&[m, 1])?)?;
        }
        if let Some(b) = self.bias {
            c = c.add(&b.reshape(&[n])?)?;
        }
        if let Some(r) = self.residual {
            c = c.add(&r.reshape(&[mats, m, n])?)?;
        }
        if self.relu {
            c = c.relu()?;
        }
        if let Some(y) = self.mask {
            let y = y.reshape(&[mats, m, n])?;
            c = c.mul(&y.binary_scalar(crate::ops::elementwise::BinaryOp::Gt, 0.0, false)?)?;
        }
        if self.group > 0 {
            let g = self.group;
            return c.reshape(&[m, n / g, g])?.permute(&[1, 0, 2]);
        }
        c.reshape(&shape)
    }

    /// The result's shape: the product's, or (N/group, M, group) under a column group.
    fn out_shape(&self, plan: &MatmulPlan) -> Vec<usize> {
        match self.group {
            0 => plan.out_shape.clone(),
            g => vec![plan.n / g, plan.m, g],
        }
    }

    /// Whether a kernel can apply it to `op(A)·op(B)` of `plan` as it stores C.
    fn fits_kernel(&self, plan: &MatmulPlan, device: &Device) -> bool {
        let on = |t: &Tensor| t.device().same(device) && t.dtype() == DType::F32;
        let sized = |t: Option<&Tensor>, len: usize| t.is_none_or(|t| on(t) && t.numel() == len);
        let out: usize = plan.out_shape.iter().product();
        sized(self.scale, plan.m)
            && sized(self.shift, plan.m)
            && sized(self.bias, plan.n)
            && sized(self.residual, out)
            && sized(self.mask, out)
            && !(self.residual.is_some() && self.mask.is_some())
            && (self.group == 0
                || (self.group % 4 == 0 && self.residual.is_none() && self.mask.is_none()))
    }

    /// Whether `apply` can take it on a product of `plan`: every operand of its size.
    fn check(&self, plan: &MatmulPlan) -> Result<()> {
        let out: usize = plan.out_shape.iter().product();
        let parts = [
            ("scale", self.scale, plan.m),
            ("shift", self.shift, plan.m),
            ("bias", self.bias, plan.n),
            ("residual", self.residual, out),
            ("mask", self.mask, out),
        ];
        if self.group > 0 && (plan.batch() != 1 || plan.n % self.group != 0) {
            return Err(Error::Shape {
                op: "matmul",
                detail: format!(
                    "epilogue column groups of {} need one output matrix with whole groups, not {:?}",
                    self.group, plan.out_shape
                ),
            });
        }
        for (what, t, len) in parts {
            if let Some(t) = t.filter(|t| t.numel() != len) {
                return Err(Error::Shape {
                    op: "matmul",
                    detail: format!(
                        "epilogue {what} {:?} needs {len} elements for a product {:?}",
                        t.shape(),
                        plan.out_shape
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Tensor {
    /// Matrix product with NumPy `matmul` semantics: 2-D, batched with
    /// broadcast leading dims, 1-D operands as rows/columns (1-D · 1-D is a
    /// rank-0 dot product).
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_with_variant(other, false, false, MatmulVariant::Auto)
    }

    /// `op(A)·op(B)`, where `op` transposes the last two dims of a stored
    /// operand when its flag is set: `a.matmul_t(&b, true, false)` with `a`
    /// stored `(K, M)` is `Aᵀ·B`, with no transpose copy.
    pub fn matmul_t(&self, other: &Tensor, transpose_a: bool, transpose_b: bool) -> Result<Tensor> {
        self.matmul_with_variant(other, transpose_a, transpose_b, MatmulVariant::Auto)
    }

    /// `Aᵀ·B` (for weight gradients `Xᵀ·dY`).
    pub fn matmul_tn(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, true, false)
    }

    /// `A·Bᵀ` (for input gradients `dY·Wᵀ`, and `X·Wᵀ` layers).
    pub fn matmul_nt(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, false, true)
    }

    /// [`Tensor::matmul_t`] on a chosen GPU kernel (ignored on the CPU reference).
    pub fn matmul_with_variant(
        &self,
        other: &Tensor,
        transpose_a: bool,
        transpose_b: bool,
        variant: MatmulVariant,
    ) -> Result<Tensor> {
        self.matmul_epilogue(
            other,
            (transpose_a, transpose_b),
            variant,
            Epilogue::default(),
        )
    }

    /// `op(A)·op(B)` followed by the element-wise ops of `epi`: fused into the kernel's
    /// stores where the kernel can, else applied after it (the same values either way).
    pub(crate) fn matmul_epilogue(
        &self,
        other: &Tensor,
        (transpose_a, transpose_b): (bool, bool),
        variant: MatmulVariant,
        epi: Epilogue<'_>,
    ) -> Result<Tensor> {
        let plan = MatmulPlan::new(self.shape(), other.shape(), transpose_a, transpose_b)?;
        epi.check(&plan)?;
        if self.dtype() == DType::F16 || other.dtype() == DType::F16 {
            let c = crate::ops::half::matmul(self, other, transpose_a, transpose_b)?;
            return epi.apply(c, &plan);
        }
        self.expect_f32("matmul")?;
        other.expect_f32("matmul")?;
        self.expect_same_device("matmul", other)?;
        match &self.device().inner {
            DeviceInner::Cpu => {
                let (a, b) = (self.host_f64(), other.host_f64());
                let out = matmul_forward(&a, &b, &plan);
                epi.apply(
                    Tensor::cpu_from_f64(self.device(), &plan.out_shape, out),
                    &plan,
                )
            }
            DeviceInner::Gpu(ctx) => {
                let requested = variant;
                let variant = resolve(ctx, variant)?;
                if plan.k == 0 {
                    return epi.apply(Tensor::zeros(self.device(), &plan.out_shape)?, &plan);
                }
                let big = |elems: usize| !crate::ops::chunk::fits(ctx, elems);
                if big(self.numel()) || big(other.numel()) || big(plan.out_shape.iter().product()) {
                    return epi.apply(matmul_big(ctx, self, other, &plan, variant)?, &plan);
                }
                let out = gpu_output(ctx, self.device(), "matmul", &plan.out_shape, DType::F32)?;
                if out.numel() == 0 {
                    return epi.apply(out, &plan);
                }
                // `Auto`: the kernel tuned for this shape class on this adapter (once the
                // product is known to be valid, so a bad one queues and allocates nothing).
                let variant = match crate::autotune::matmul_variant(
                    self,
                    other,
                    (transpose_a, transpose_b),
                    (plan.batch() * plan.m * plan.n * plan.k, plan.n, plan.k),
                    requested,
                ) {
                    MatmulVariant::Auto => variant,
                    tuned => resolve(ctx, tuned)?,
                };
                let (Some(a), Some(b), Some(c)) = (self.gpu_arg(), other.gpu_arg(), out.gpu_arg())
                else {
                    unreachable!("GPU device holds GPU tensors")
                };
                // Per-row operands repeat every M rows, also where the kernel folds a
                // batch into its rows.
                let fused = epi
                    .fits_kernel(&plan, self.device())
                    .then_some((epi, plan.m));
                let group = matmul_dispatch(ctx, &plan.for_gpu(), variant, (a, b, c), fused)?;
                // What the kernel left: all of `epi`, its column group, or nothing.
                let left = match fused {
                    Some(_) => Epilogue {
                        group,
                        ..Epilogue::default()
                    },
                    None => epi,
                };
                left.apply(out, &plan)?.reshape(&epi.out_shape(&plan))
            }
        }
    }
}

/// A product with an operand or result past one storage binding, tiled: for each output
/// matrix, blocks of `mb` rows of op(A) times blocks of `nb` columns of op(B), each block
/// gathered by copies into a tensor of at most one binding, multiplied by the ordinary
/// kernels (transposes kept as flags), and copied into its place in C. B's column block
/// spans all of B when B fits, so a tall A × small B is one product per row block.
/// Only a single row of K past the binding (K·4 bytes > the limit) is `Err(TooLarge)`.
fn matmul_big(
    ctx: &Arc<GpuContext>,
    a: &Tensor,
    b: &Tensor,
    p: &MatmulPlan,
    variant: MatmulVariant,
) -> Result<Tensor> {
    use crate::ops::chunk::{binding_elems, gather_box, scatter_block, windows};
    let (m, n, k) = (p.m, p.n, p.k);
    let limit = binding_elems(ctx);
    // Bound sizes as the register-blocked kernels pad them: rows to whole vec4s.
    let r4 = |x: usize| x.div_ceil(4) * 4;
    if r4(k) * 4 > limit {
        return Err(Error::TooLarge {
            op: "matmul",
            shape: a.shape().to_vec(),
            bytes: (k * 4) as u64,
            limit: ctx.binding_limit(),
            limit_name: "max_storage_buffer_binding_size (one row of K)",
        });
    }
    let down4 = |x: usize| (x / 4 * 4).max(4);
    let nb = n.min(down4(limit / r4(k)));
    let mb = m.min(down4(limit / r4(k).max(r4(nb))));
    let out = crate::ops::gpu_output_big(ctx, a.device(), "matmul", &p.out_shape, DType::F32)?;
    // Stored matrices: A is (M, K) or (K, M), B is (K, N) or (N, K); one-dimensional
    // operands are a row (1, K) and a column (K, 1) (the plan's `ta`/`tb` already say so).
    let a_dims = if p.ta { (k, m) } else { (m, k) };
    let b_dims = if p.tb { (n, k) } else { (k, n) };
    let a_mats = a.numel() / (m * k);
    let b_mats = b.numel() / (k * n);
    for bi in 0..p.batch() {
        let (oa, ob) = p.offsets(bi);
        let (am, bm) = (oa / (m * k), ob / (k * n));
        // Row block of op(A): rows i0.. of A, or columns i0.. of a transposed A.
        let a_block = |(i0, len): (usize, usize)| -> Result<Tensor> {
            let (rows, cols) = if p.ta {
                ((0, k), (i0, len))
            } else {
                ((i0, len), (0, k))
            };
            let t = gather_box(ctx, a, (a_mats, a_dims.0, a_dims.1), ((am, 1), rows, cols))?;
            t.reshape(&[rows.1, cols.1])
        };
        let b_block = |(j0, len): (usize, usize)| -> Result<Tensor> {
            let (rows, cols) = if p.tb {
                ((j0, len), (0, k))
            } else {
                ((0, k), (j0, len))
            };
            let t = gather_box(ctx, b, (b_mats, b_dims.0, b_dims.1), ((bm, 1), rows, cols))?;
            t.reshape(&[rows.1, cols.1])
        };
        let col_blocks: Vec<(usize, usize)> = windows(n, nb).collect();
        // B's only block is gathered once for every row block.
        let whole_b = if col_blocks.len() == 1 {
            Some(b_block(col_blocks[0])?)
        } else {
            None
        };
        for rows in windows(m, mb) {
            let ab = a_block(rows)?;
            for &cols in &col_blocks {
                let bb = match &whole_b {
                    Some(t) => t.clone(),
                    None => b_block(cols)?,
                };
                let c = ab.matmul_with_variant(&bb, p.ta, p.tb, variant)?;
                scatter_block(
                    ctx,
                    &c,
                    &out,
                    (rows.1, cols.1),
                    n,
                    (bi * m + rows.0, cols.0),
                )?;
            }
        }
    }
    Ok(out)
}

/// Vec4s of a padded row one `matmul_pad_rows` invocation stores (as in matmul.wgsl).
const PAD_SEGMENT: usize = 64;

/// A zero-padded copy of an operand whose rows of `ld` elements are not a multiple of 4 long
/// (`matmul_pad_rows`), so the register-blocked kernels' vec4 loads stay aligned: the copy
/// (kept alive until its dispatches are recorded), its bytes, and its row length.
fn padded_rows(ctx: &GpuContext, arg: BufArg<'_>, ld: usize) -> Result<(GpuBuffer, u64, usize)> {
    let (rows, ld4) = (arg.1 as usize / 4 / ld, ld.div_ceil(4) * 4);
    let bytes = (rows * ld4 * 4) as u64;
    ctx.check_binding("matmul", &[rows, ld4], bytes)?;
    let copy = ctx.alloc(bytes);
    pad_rows_into(ctx, arg, ld, (copy.raw(), bytes))?;
    Ok((copy, bytes, ld4))
}

/// Records `matmul_pad_rows`: the rows of `ld` elements of `src` into `dst`, each zero-filled
/// to `ld` rounded up to a multiple of 4.
fn pad_rows_into(ctx: &GpuContext, src: BufArg<'_>, ld: usize, dst: BufArg<'_>) -> Result<()> {
    let (rows, ld4) = (src.1 as usize / 4 / ld, ld.div_ceil(4) * 4);
    // One invocation per row segment of up to PAD_SEGMENT (matmul.wgsl) vec4s.
    let segments = (ld4 / 4).div_ceil(PAD_SEGMENT);
    let n = rows * segments;
    let params = [n as u32, ld as u32, ld4 as u32, segments as u32];
    ctx.dispatch(
        &base_kernel(),
        "matmul_pad_rows",
        &[],
        &params,
        &[src, dst],
        grid_1d(ctx, n),
    )
}

impl Tensor {
    /// A matrix (R, C) as (R, C4), C4 = C rounded up to a multiple of 4, the new columns zero:
    /// an operand the vec4 product kernels read without padding it themselves. GPU tensors
    /// only (the caller's choice: on the CPU reference nothing needs it).
    pub(crate) fn zero_pad_columns(&self, op: &'static str) -> Result<Tensor> {
        let &[rows, cols] = self.shape() else {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "padding the columns of {:?}: a matrix expected",
                    self.shape()
                ),
            });
        };
        let DeviceInner::Gpu(ctx) = &self.device().inner else {
            return Err(Error::Invalid {
                op,
                detail: "padding columns is a GPU step".into(),
            });
        };
        let out = gpu_output(
            ctx,
            self.device(),
            op,
            &[rows, cols.div_ceil(4) * 4],
            DType::F32,
        )?;
        self.expect_f32(op)?;
        if let (Some(src), Some(dst), true) = (self.gpu_arg(), out.gpu_arg(), self.numel() > 0) {
            pad_rows_into(ctx, src, cols, dst)?;
        }
        Ok(out)
    }
}

/// Records `C = op(A)·op(B)`, with `epi` applied as C is stored (by the split-K sum when K
/// is split), its per-row operands repeating every `rows` rows: returns the column group the
/// kernel left for the caller to apply (`Epilogue::group`; 0 when its stores took it).
fn matmul_dispatch<'a>(
    ctx: &GpuContext,
    p: &MatmulPlan,
    variant: MatmulVariant,
    (a, b, c): (BufArg<'a>, BufArg<'a>, BufArg<'a>),
    epi: Option<(Epilogue<'a>, usize)>,
) -> Result<usize> {
    // Stored row lengths: A is (M, K) or (K, M), B is (K, N) or (N, K).
    let lda = if p.ta { p.m } else { p.k };
    let ldb = if p.tb { p.k } else { p.n };
    // The small kernel reads vec4s of any alignment, so its bindings must cover whole vec4s:
    // an operand whose buffer ends inside its last vec4 (a few floats in a 24-byte buffer)
    // takes the padded path instead. (Lavapipe bounds-checks each float of a vec4, a GPU
    // may not.)
    fn whole_vec4s((buf, bytes): BufArg<'_>) -> Option<BufArg<'_>> {
        let rounded = bytes.div_ceil(16) * 16;
        (buf.size() >= rounded).then_some((buf, rounded))
    }
    let small = match (whole_vec4s(a), whole_vec4s(b)) {
        (Some(wa), Some(wb))
            if variant == MatmulVariant::RegisterBlocked
                && p.m * p.n * p.k <= SMALL_PRODUCT
                && small_takes(p.n, p.k) =>
        {
            Some((wa, wb))
        }
        _ => None,
    };
    // At most GEMV_ROWS rows: one column of C per invocation (a 64-row tile would idle).
    let gemv = match (whole_vec4s(a), whole_vec4s(b)) {
        (Some(wa), Some(wb)) if variant != MatmulVariant::Tiled && p.m <= GEMV_ROWS => {
            Some((wa, wb))
        }
        _ => None,
    };
    let (entry, a, b) = match (gemv, small) {
        (Some((wa, wb)), _) => ("matmul_forward_gemv", wa, wb),
        (None, Some((wa, wb))) => ("matmul_forward_small", wa, wb),
        // C's rows a multiple of 4 long: stored as whole vec4s.
        (None, None)
            if matches!(
                variant,
                MatmulVariant::Subgroup | MatmulVariant::SubgroupTextures
            ) && p.n % 4 == 0 =>
        {
            ("matmul_forward_subgroup_v4", a, b)
        }
        (None, None) => (variant.entry(), a, b),
    };
    // The vec4 kernels load aligned vec4s only.
    let vec4_loads = matches!(
        entry,
        "matmul_forward_blocked" | "matmul_forward_subgroup" | "matmul_forward_subgroup_v4"
    );
    // A K past the kernel's loop budget runs in chunks (split-K, see `k_chunk_limit`).
    let chunk = k_chunk(entry);
    let chunks = p.k.div_ceil(chunk);
    // Column groups are stored by every kernel but the tiled one and gemv, on an unsplit K;
    // elsewhere the caller permutes after the product.
    let grouped_stores =
        !matches!(entry, "matmul_forward_tiled" | "matmul_forward_gemv") && chunks <= 1;
    let (epi, left) = match epi {
        Some((e, rows)) if e.group > 0 && !grouped_stores => {
            (Some((Epilogue { group: 0, ..e }, rows)), e.group)
        }
        epi => (epi, 0),
    };
    let c_group = epi.map_or(0, |(e, _)| e.group);
    // Every kernel applies the epilogue as it stores C (or the split-K sum does).
    let (epi, epi_rows) = match epi {
        Some((e, rows)) => (Some(e), rows),
        None => (None, 0),
    };
    let epilogue_flags = epi.map_or(0, |e| e.flags());
    // The epilogue's operands, or A in their place (bound, never read): the column bias, the
    // residual or the mask (one binding), the row scale and the row shift.
    let (bias, aux, scale, shift) = match &epi {
        Some(e) => {
            let operand = |t: Option<&'a Tensor>| t.and_then(Tensor::gpu_arg).unwrap_or(a);
            (
                operand(e.bias),
                operand(e.residual.or(e.mask)),
                operand(e.scale),
                operand(e.shift),
            )
        }
        None => (a, a, a, a),
    };
    let pad = |arg, ld: usize| -> Result<Option<(GpuBuffer, u64, usize)>> {
        if !vec4_loads || ld % 4 == 0 {
            Ok(None)
        } else {
            padded_rows(ctx, arg, ld).map(Some)
        }
    };
    let (a_copy, b_copy) = (pad(a, lda)?, pad(b, ldb)?);
    let (a, lda4) = a_copy
        .as_ref()
        .map_or((a, lda), |(g, bytes, ld)| ((g.raw(), *bytes), *ld));
    let (b, ldb4) = b_copy
        .as_ref()
        .map_or((b, ldb), |(g, bytes, ld)| ((g.raw(), *bytes), *ld));
    let tile_m = if entry.starts_with("matmul_forward_subgroup") {
        SUBGROUP_TILE_M
    } else if entry == "matmul_forward_small"
        && p.n <= SMALL_NARROW_N
        && p.m.div_ceil(TILE) * p.batch() < SMALL_NARROW_BELOW
    {
        SMALL_NARROW_TILE_M
    } else {
        TILE
    };
    let (tiles_m, tiles_n) = (p.m.div_ceil(tile_m), p.n.div_ceil(TILE));
    let subgroup = entry.starts_with("matmul_forward_subgroup");
    // The last column tile on the edge kernels where it holds 1 to 16 columns.
    let edge = subgroup && edge_column(tiles_m, p.n);
    let edge_entry = match entry {
        "matmul_forward_subgroup_v4" => "matmul_forward_subgroup_edge_v4",
        _ => "matmul_forward_subgroup_edge",
    };
    // (entry, tiles_m, tiles_n) of each dispatch of one product: the wide tiles, then the
    // edge column's 128-row tiles.
    let mut dispatches = Vec::with_capacity(2);
    if tiles_n > usize::from(edge) {
        dispatches.push((entry, tiles_m, tiles_n - usize::from(edge)));
    }
    if edge {
        dispatches.push((edge_entry, tiles_m.div_ceil(4), 1));
    }
    // Batch strides are whole matrices: rescale them to the padded row length.
    let a_strides: Vec<usize> = p.a_strides.iter().map(|s| s / lda * lda4).collect();
    let b_strides: Vec<usize> = p.b_strides.iter().map(|s| s / ldb * ldb4).collect();
    // matmul.wgsl's Params: its flags and the K chunks of one dispatch vary.
    let params_tiled = |flags: u32,
                        splits: usize,
                        chunk: usize,
                        split0: usize,
                        (tiles_m, tiles_n): (usize, usize)|
     -> Vec<u32> {
        let mut w = vec![
            p.m as u32,
            p.n as u32,
            p.k as u32,
            p.batch() as u32,
            tiles_n as u32,
            tiles_m as u32,
            p.batch_dims.len() as u32,
            flags,
            lda4 as u32,
            ldb4 as u32,
            splits as u32,
            chunk as u32,
            split0 as u32,
            epi_rows as u32,
            c_group as u32,
            tile_m as u32,
        ];
        w.extend(pack_dims(&p.batch_dims));
        w.extend(pack_dims(&a_strides));
        w.extend(pack_dims(&b_strides));
        w
    };
    let params = |flags: u32, splits: usize, chunk: usize, split0: usize| -> Vec<u32> {
        params_tiled(flags, splits, chunk, split0, (tiles_m, tiles_n))
    };
    let transposes = p.ta as u32 | (p.tb as u32) << 1;
    let flag = |x: bool| if x { 1.0 } else { 0.0 };
    // The register-blocked kernel reads the transposes from `flags` (one pipeline for every
    // layout: see matmul.wgsl); the others are specialised by override constants.
    let specialised = [("TA", flag(p.ta)), ("TB", flag(p.tb))];
    // gemv: on one row of C from A stored (M, K), row 0 only (ONE_ROW, see the shader); where
    // every read is of a whole vec4 (rows and batch strides of whole vec4s: its reads start at
    // multiples of 4 along K and N, and K chunks are multiples of 4), no unaligned reads
    // (ALIGNED).
    let aligned = lda4 % 4 == 0
        && ldb4 % 4 == 0
        && a_strides.iter().chain(&b_strides).all(|s| s % 4 == 0)
        && (chunks <= 1 || chunk % 4 == 0);
    let gemv_constants = [
        ("ONE_ROW", flag(p.m == 1 && !p.ta)),
        ("ALIGNED", flag(aligned)),
    ];
    let constants: &[(&str, f64)] = match entry {
        "matmul_forward_gemv" => &gemv_constants,
        "matmul_forward_blocked" | "matmul_forward_small" => &[],
        _ => &specialised,
    };
    let kernel = if subgroup { SHADER } else { base_kernel() };
    // The subgroup kernels and gemv read A and B through textures where asked and where both
    // fit one (`texture::rows_for`); else from the storage buffers, which computes the same
    // values. gemv from storage took ResNet-50's head (1×2048 · 2048×1000) 9-11 ms on lavapipe
    // on an AVX2 host (every storage load a loop over the lanes).
    // The register-blocked variant's small kernels (matmul_forward_small, gemv) read textures
    // too where products default to them (`reads_textures`): the autotuner gives that variant
    // every product of up to 2^21 multiply-adds on a CPU adapter, for its quick pipeline
    // compile (src/autotune.rs). The storage form stays under test on adapters without
    // subgroups (the GL pass).
    let gemv = entry == "matmul_forward_gemv";
    let textured = match variant {
        MatmulVariant::SubgroupTextures => subgroup || gemv,
        MatmulVariant::RegisterBlocked => {
            (gemv || entry == "matmul_forward_small") && reads_textures(ctx)
        }
        _ => false,
    };
    let textures = match textured {
        true => ctx
            .operand_texture(0, a)
            .zip(ctx.operand_texture(1, b))
            .map(|(ta, tb)| [ta, tb]),
        false => None,
    };
    // Chunks `split0 ..` (`splits` of them) of the product into `out`.
    let product = |flags: u32, splits: usize, chunk: usize, split0: usize, out: BufArg<'_>| {
        let buffers = [a, b, out, bias, aux, scale, shift];
        // The subgroup kernels compile only the epilogue steps and the K tail this dispatch
        // uses (EPI, K_TAIL: see matmul.wgsl). Every chunk but the last is a multiple of 4
        // long, so a tail exists only where K itself is not.
        let mut constants = constants.to_vec();
        if subgroup {
            constants.push(("EPI", (flags & EPILOGUE_BITS) as f64));
            constants.push(("K_TAIL", flag(p.k % 4 != 0)));
        }
        let params: Vec<_> = dispatches
            .iter()
            .map(|&(_, tiles_m, tiles_n)| {
                params_tiled(flags, splits, chunk, split0, (tiles_m, tiles_n))
            })
            .collect();
        let all: Vec<_> = dispatches
            .iter()
            .zip(&params)
            .map(|(&(entry, tiles_m, tiles_n), params)| Dispatch {
                entry,
                params,
                groups: ctx.grid((tiles_m * tiles_n * p.batch() * splits) as u64),
            })
            .collect();
        let Some(textures) = &textures else {
            let bindings: Vec<_> = buffers
                .iter()
                .map(|&(b, n)| Binding::Buffer((b, 0, n)))
                .collect();
            return ctx.dispatch_bound_all(&kernel, &constants, &bindings, &[], &all);
        };
        // The operands are copied into the textures once, before the first dispatch, and
        // the edge dispatch follows under the same lock (no other copy in between).
        let rest = &buffers[2..];
        ctx.dispatch_textured_all(&texture_kernel(), &constants, textures, rest, &all)
    };
    if chunks <= 1 {
        product(transposes | epilogue_flags, 1, p.k, 0, c)?;
        return Ok(left);
    }
    // Split-K: groups of chunks computed side by side into `parts`, each group summed into C,
    // or into a running total that the next group adds (only when C times the chunks passes
    // PARTIALS_ELEMS).
    let out_elems = p.batch() * p.m * p.n;
    let budget = crate::ops::chunk::binding_elems(ctx).min(PARTIALS_ELEMS.max(out_elems));
    let group = (budget / out_elems)
        .clamp(1, MAX_SPLITS_PER_PASS)
        .min(chunks);
    let parts_buf = ctx.try_alloc("matmul", (group * out_elems * 4) as u64)?;
    let parts = (parts_buf.raw(), (group * out_elems * 4) as u64);
    let out_bytes = (out_elems * 4) as u64;
    let mut prior: Option<GpuBuffer> = None;
    for split0 in (0..chunks).step_by(group) {
        let splits = group.min(chunks - split0);
        product(transposes, splits, chunk, split0, parts)?;
        let last = split0 + splits == chunks;
        let total = if last {
            None
        } else {
            Some(ctx.try_alloc("matmul", out_bytes)?)
        };
        let dst = total.as_ref().map_or(c, |t| (t.raw(), out_bytes));
        let mut flags = if last { epilogue_flags } else { 0 };
        if prior.is_some() {
            flags |= SPLIT_PRIOR;
        }
        let prior_arg = prior.as_ref().map_or(parts, |t| (t.raw(), out_bytes));
        ctx.dispatch(
            &base_kernel(),
            "matmul_sum_splits",
            &[],
            &params(flags, splits, chunk, split0),
            &[parts, prior_arg, dst, bias, aux, scale, shift],
            grid_1d(ctx, out_elems),
        )?;
        prior = total;
    }
    Ok(left)
}

/// matmul.wgsl's flag for `matmul_sum_splits`: add the total of the earlier groups of chunks.
const SPLIT_PRIOR: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_module_needs_no_subgroups() {
        let source = base_kernel().source;
        assert!(
            source.contains("fn matmul_forward_blocked") && !source.contains("subgroupBroadcast(")
        );
        let module = naga::front::wgsl::parse_str(source).expect("base part parses");
        let caps = naga::valid::Capabilities::all() - naga::valid::Capabilities::SUBGROUP;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .expect("base part validates without subgroups");
    }

    /// The texture module defines gemv's any-alignment reads once, over the textures: the
    /// storage block is cut out (else WGSL's duplicate definitions, or storage reads).
    #[test]
    fn texture_module_reads_gemv_operands_from_textures() {
        let source = texture_kernel().source;
        let body = |name: &str| {
            let at = source.find(&format!("fn {name}(")).expect("defined");
            assert_eq!(source.matches(&format!("fn {name}(")).count(), 1, "{name}");
            source[at..]
                .split("\n}")
                .next()
                .unwrap_or_default()
                .to_string()
        };
        for (name, texture) in [("load_a_any", "a_tex"), ("load_b_any", "b_tex")] {
            let f = body(name);
            assert!(
                f.contains(texture) && !f.contains("a4[") && !f.contains("b4["),
                "{f}"
            );
        }
        assert!(source.contains("fn matmul_forward_gemv("));
        naga::front::wgsl::parse_str(source).expect("texture module parses");
    }

    /// The same seeded values in [-1, 1) on the GPU and the CPU reference.
    fn seeded_pair((dev, cpu): (&Device, &Device), seed: u64, shape: &[usize]) -> (Tensor, Tensor) {
        let v = crate::Rng::new(seed).vec_uniform(shape.iter().product(), -1.0, 1.0);
        (
            Tensor::from_slice(dev, &v, shape).unwrap(),
            Tensor::from_slice(cpu, &v, shape).unwrap(),
        )
    }

    /// Every kernel (and the split-K sum) applies every epilogue part as the separate
    /// element-wise ops on the CPU reference compute them: ragged shapes (edges of every
    /// tile and vec4), a batched B under an unbatched A (a convolution's product), a batched
    /// A folded into the kernel's rows (the per-row operands repeat every M rows).
    #[test]
    fn every_kernel_applies_the_epilogue() {
        let Ok(dev) = Device::gpu() else { return };
        let cpu = Device::cpu();
        let t = |seed: u64, shape: &[usize]| seeded_pair((&dev, &cpu), seed, shape);
        // (A stored, B stored, ta, tb)
        let cases: [(&[usize], &[usize], bool, bool); 10] = [
            // Rows of C a multiple of 4 (vec4 stores), N = 132 ends 4 into a tile: the
            // subgroup kernel's _v4 entry, and its right edge.
            (&[70, 36], &[2, 36, 132], false, false),
            (&[36, 70], &[132, 36], true, true),
            (&[1, 37], &[70, 37], false, true), // M = 1, B stored (N, K): gemv
            (&[37, 3], &[37, 21], true, false), // M = 3, A stored (K, M): gemv
            (&[4, 45], &[2, 45, 70], false, false), // M = 4, batched, N past 64: gemv
            (&[13, 29], &[2, 37, 29], false, true), // (F, CK)·(N, L, CK)ᵀ: a 3×3 conv
            (&[9, 300], &[2, 300, 19], false, false), // K past the small kernel's: blocked
            (&[7, 5], &[3, 5, 21], false, false), // (F, C)·(N, C, L): a 1×1 conv
            (&[70, 64], &[64, 130], false, false), // past a 64-tile both ways
            (&[2, 9, 6], &[6, 11], false, false), // batch folded into the rows
        ];
        for (i, &(sa, sb, ta, tb)) in cases.iter().enumerate() {
            let plan = MatmulPlan::new(sa, sb, ta, tb).unwrap();
            let out: usize = plan.out_shape.iter().product();
            let seed = 10 * i as u64;
            let (a, a_cpu) = t(seed, sa);
            let (b, b_cpu) = t(seed + 1, sb);
            let (scale, scale_cpu) = t(seed + 2, &[plan.m, 1]);
            let (shift, shift_cpu) = t(seed + 3, &[plan.m]);
            let (bias, bias_cpu) = t(seed + 4, &[plan.n]);
            let (res, res_cpu) = t(seed + 5, &[out]);
            for parts in 0..3 {
                // 0: scale, shift, residual, relu (a ResNet block's end); 1: shift, bias,
                // relu, mask; 2: scale, residual.
                fn make<'t>(parts: usize, [s, sh, bi, r]: [&'t Tensor; 4]) -> Epilogue<'t> {
                    Epilogue {
                        scale: (parts != 1).then_some(s),
                        shift: (parts != 2).then_some(sh),
                        bias: (parts == 1).then_some(bi),
                        residual: (parts != 1).then_some(r),
                        relu: parts != 2,
                        mask: (parts == 1).then_some(r),
                        group: 0,
                    }
                }
                let want = a_cpu
                    .matmul_epilogue(
                        &b_cpu,
                        (ta, tb),
                        MatmulVariant::Auto,
                        make(parts, [&scale_cpu, &shift_cpu, &bias_cpu, &res_cpu]),
                    )
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap();
                for variant in MatmulVariant::KERNELS {
                    for chunk in [None, Some(16)] {
                        let run = || {
                            a.matmul_epilogue(
                                &b,
                                (ta, tb),
                                variant,
                                make(parts, [&scale, &shift, &bias, &res]),
                            )
                        };
                        let got = match chunk {
                            None => run(),
                            Some(c) => with_k_chunk(c, run),
                        };
                        let Ok(got) = got else {
                            assert!(
                                matches!(
                                    variant,
                                    MatmulVariant::Subgroup | MatmulVariant::SubgroupTextures
                                ),
                                "{variant:?}"
                            );
                            continue; // no 8-wide subgroups on this adapter
                        };
                        assert_eq!(got.shape(), plan.out_shape.as_slice());
                        let got = got.to_vec::<f32>().unwrap();
                        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
                                "case {i} parts {parts} {variant:?} chunk {chunk:?}: \
                                 element {k}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `Epilogue::group`: the product (M, Q·G) stored as (Q, M, G), on every kernel, with
    /// and without split K (which leaves the permute to a copy after the product), against
    /// the CPU reference's product and epilogue permuted here by index.
    #[test]
    fn column_groups_store_the_permute() {
        let Ok(dev) = Device::gpu() else { return };
        let cpu = Device::cpu();
        let t = |seed: u64, shape: &[usize]| seeded_pair((&dev, &cpu), seed, shape);
        // (A stored, B stored, ta, tb, G): the folded convolution's (F, CK)·(N·L, CK)ᵀ with
        // L = 16 (digits), 4, 12 and 20 (groups that straddle the kernels' 8-column stores),
        // M past one 32-row tile, N past a 64-wide tile and ending inside one; gemv (M ≤ 4)
        // and the small kernel take the permute after the product.
        type Case = (&'static [usize], &'static [usize], bool, bool, usize);
        let cases: [Case; 7] = [
            (&[32, 144], &[1024, 144], false, true, 16),
            (&[33, 20], &[100, 20], false, true, 4),
            (&[40, 13], &[13, 132], false, false, 12),
            (&[70, 300], &[300, 140], false, false, 20),
            (&[37, 9], &[37, 96], true, false, 8),
            (&[3, 37], &[37, 48], false, false, 16),
            (&[5, 8], &[24, 8], false, true, 4),
        ];
        let mut results = Vec::new(); // kept: no kernel's output is another's recycled buffer
        for (i, &(sa, sb, ta, tb, g)) in cases.iter().enumerate() {
            let plan = MatmulPlan::new(sa, sb, ta, tb).unwrap();
            let (m, n) = (plan.m, plan.n);
            let seed = 20 * i as u64;
            let (a, a_cpu) = t(seed, sa);
            let (b, b_cpu) = t(seed + 1, sb);
            let (scale, scale_cpu) = t(seed + 2, &[m]);
            let (shift, shift_cpu) = t(seed + 3, &[m]);
            let (bias, bias_cpu) = t(seed + 4, &[n]);
            fn make(t: [&Tensor; 3], parts: usize, group: usize) -> Epilogue<'_> {
                Epilogue {
                    scale: (parts == 0).then_some(t[0]),
                    shift: (parts == 0).then_some(t[1]),
                    bias: (parts == 1).then_some(t[2]),
                    relu: parts != 2,
                    group,
                    ..Epilogue::default()
                }
            }
            for parts in 0..3 {
                let plain = a_cpu
                    .matmul_epilogue(
                        &b_cpu,
                        (ta, tb),
                        MatmulVariant::Auto,
                        make([&scale_cpu, &shift_cpu, &bias_cpu], parts, 0),
                    )
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap();
                // (M, Q, G) → (Q, M, G)
                let mut want = vec![0.0; m * n];
                for (k, w) in want.iter_mut().enumerate() {
                    let (q, r, j) = (k / (m * g), k / g % m, k % g);
                    *w = plain[r * n + q * g + j];
                }
                for variant in MatmulVariant::KERNELS {
                    for chunk in [None, Some(16)] {
                        let run = || {
                            a.matmul_epilogue(
                                &b,
                                (ta, tb),
                                variant,
                                make([&scale, &shift, &bias], parts, g),
                            )
                        };
                        let got = match chunk {
                            None => run(),
                            Some(c) => with_k_chunk(c, run),
                        };
                        let Ok(got) = got else {
                            assert!(
                                matches!(
                                    variant,
                                    MatmulVariant::Subgroup | MatmulVariant::SubgroupTextures
                                ),
                                "{variant:?}"
                            );
                            continue; // no 8-wide subgroups on this adapter
                        };
                        assert_eq!(got.shape(), [n / g, m, g], "case {i}");
                        let v = got.to_vec::<f32>().unwrap();
                        for (k, (x, w)) in v.iter().zip(&want).enumerate() {
                            assert!(
                                (x - w).abs() <= 1e-4 + 1e-4 * w.abs(),
                                "case {i} parts {parts} {variant:?} chunk {chunk:?}: \
                                 element {k}: {x} vs {w}"
                            );
                        }
                        results.push(got);
                    }
                }
            }
        }
        // A batch of output matrices, or a group that does not divide the columns: refused.
        for (sa, sb) in [(&[2, 5, 6][..], &[6, 8][..]), (&[6, 6], &[6, 6])] {
            let bad = Epilogue {
                group: 4,
                ..Epilogue::default()
            };
            let r =
                t(1, sa)
                    .0
                    .matmul_epilogue(&t(2, sb).0, (false, false), MatmulVariant::Auto, bad);
            assert!(
                matches!(r, Err(Error::Shape { op: "matmul", .. })),
                "{sa:?} {sb:?}"
            );
        }
    }
}
