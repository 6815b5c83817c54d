// elementwise.wgsl — element-wise unary and binary ops on f32.
//
// Entry points (workgroup size 256, one element per invocation; the grid may be
// split over x/y/z when it exceeds 65535 workgroups per dimension):
//   unary_forward             out[i] = f(x[i])                      f chosen by override OP
//   binary_forward            out[i] = g(a[i], b[i])                same shape
//   binary_broadcast_forward  out[i] = g(a[bcast(i)], b[bcast(i)])  NumPy broadcasting, any rank
//   binary_broadcast3_forward the same over a shape merged to rank <= 3, RUN elements
//                             per invocation (one index decomposition per run)
//   scalar_forward            out[i] = g(x[i], s) or g(s, x[i])     scalar operand
// The op is a pipeline-overridable constant, so each (entry, OP) pipeline is
// specialised and the switch folds away. A tensor past one storage binding is run as
// several dispatches over windows bound at offsets (src/ops/chunk.rs); `n` then counts
// the window's elements and, for the broadcast entry, `offsets` places the window.

override OP: u32 = 0u;
// binary_broadcast3_forward: consecutive output elements per invocation (divides the
// innermost merged dim and every window start, so a run never leaves its row).
override RUN: u32 = 1u;

struct Params {
    n: u32,           // number of output elements
    rank: u32,        // rank of the output (broadcast entry)
    scalar: f32,      // the scalar operand (scalar entry)
    scalar_lhs: u32,  // 1: g(s, x), 0: g(x, s)
    dims: array<vec4<u32>, 2>,       // output dims, outermost first
    a_strides: array<vec4<u32>, 2>,  // a's strides in the broadcast shape (0 = stretched)
    b_strides: array<vec4<u32>, 2>,  // b's strides in the broadcast shape
    // Broadcast entry over a window of a tensor past one binding (all 0 otherwise):
    // x: index of output element 0 in the whole output; y, z: first element of a and b
    // bound (the bindings start at those elements, see ops/chunk.rs).
    offsets: vec4<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // (n) or a's own shape
@group(0) @binding(2) var<storage, read_write> out2: array<f32>; // output of unary/scalar entries
@group(0) @binding(2) var<storage, read> b: array<f32>;        // binary entries: second operand
@group(0) @binding(3) var<storage, read_write> out3: array<f32>; // output of binary entries

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn is_nan(x: f32) -> bool {
    // Exponent all ones and a non-zero mantissa; robust against fast-math folding of x != x.
    let bits = bitcast<u32>(x);
    return (bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0u;
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), for the exact GELU.
fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-z * z));
}

// erf to ~1e-7 relative everywhere (the GELU above keeps A&S, whose 1.5e-7 is absolute):
// |x| < 1, the Maclaurin series to x^21 (next term < 1.3e-8·|x|); beyond, 1 - erfc with
// Numerical Recipes' erfcc (fractional error < 1.2e-7 of erfc <= 0.16).
fn erf_f32(x: f32) -> f32 {
    let z = abs(x);
    if (z < 1.0) {
        let q = x * x;
        // Σ (-1)^n x^(2n+1) / (n! (2n+1)), n = 0..10, in Horner form in x².
        var p = -1.0 / 76204800.0;                               // n = 10: 1/(10!·21)
        p = p * q + 1.0 / 6894720.0;                             // n = 9
        p = p * q - 1.0 / 685440.0;                              // n = 8
        p = p * q + 1.0 / 75600.0;                               // n = 7
        p = p * q - 1.0 / 9360.0;                                // n = 6
        p = p * q + 1.0 / 1320.0;                                // n = 5
        p = p * q - 1.0 / 216.0;                                 // n = 4
        p = p * q + 1.0 / 42.0;                                  // n = 3
        p = p * q - 1.0 / 10.0;                                  // n = 2
        p = p * q + 1.0 / 3.0;                                   // n = 1
        p = p * q - 1.0;                                         // n = 0 (negated below)
        return -1.1283791670955126 * x * p;                      // 2/√π
    }
    if (is_nan(x)) { return x; }
    let t = 1.0 / (1.0 + 0.5 * z);
    let e = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(e - 1.0, 1.0 - e, x > 0.0);
}

// ln(1 + x) without cancellation for small x. On [-0.5, 1], 2·atanh(s) with s = x/(2 + x)
// (|s| <= 1/3; the series to s^15 leaves < 1e-10 relative), since the textbook
// ln(u)·x/(u - 1), u = 1 + x, is undone by drivers that fold (1 + x) - 1 to x. Outside,
// 1 + x is exact (x < -0.5) or ln(1 + x) >= ln 2 absorbs its rounding.
fn log1p_f32(x: f32) -> f32 {
    if (is_nan(x)) { return x; }
    if (x == -1.0) { return bitcast<f32>(0xff800000u); }
    if (x < -1.0) { return nan(); }
    if (is_inf(x)) { return x; }                                 // +inf (-inf is < -1)
    if (x < -0.5 || x > 1.0) { return log(1.0 + x); }
    let s = x / (2.0 + x);
    let q = s * s;
    let p = 1.0 + q * (1.0 / 3.0 + q * (1.0 / 5.0 + q * (1.0 / 7.0 + q * (1.0 / 9.0
        + q * (1.0 / 11.0 + q * (1.0 / 13.0 + q * (1.0 / 15.0)))))));
    return 2.0 * s * p;
}

// tanh without cancellation for small |x|: lavapipe's builtin computes it as
// (e^2x - 1)/(e^2x + 1) and loses all relative accuracy near 0 (1e-3 at x = 6e-5). Below
// 0.55 the odd Taylor series to x^17 (|x|^2 <= 0.3025; terms shrink ~8x each, < 1e-8
// relative left); above, 1 - e^{-2|x|} keeps at least a third of its value, so no
// cancellation. Clamped at 15 where tanh is 1 in f32 (some drivers overflow to NaN).
fn tanh_f32(x: f32) -> f32 {
    if (is_nan(x)) { return x; }
    let a = min(abs(x), 15.0);
    if (a < 0.55) {
        let q = x * x;
        return x * (1.0 + q * (-1.0 / 3.0 + q * (2.0 / 15.0 + q * (-17.0 / 315.0
            + q * (62.0 / 2835.0 + q * (-1382.0 / 155925.0 + q * (21844.0 / 6081075.0
            + q * (-929569.0 / 638512875.0 + q * (6404582.0 / 10854718875.0)))))))));
    }
    let t = exp(-2.0 * a);
    return sign(x) * (1.0 - t) / (1.0 + t);
}

// ---- trigonometric and hyperbolic functions, accurate on every adapter: lavapipe's
// builtin sin/cos are wrong for large arguments and its sinh/asinh/atanh lose all relative
// accuracy near 0, so none of them is used. Polynomials on reduced ranges (the Cephes
// single-precision forms, about 1-2 ulp).

// 2/π in 224 bits, most significant word first (fdlibm's ipio2 table, regrouped).
const TWO_OVER_PI = array<u32, 7>(0xa2f9836eu, 0x4e441529u, 0xfc2757d1u, 0xf534ddc0u,
    0xdb629599u, 0x3c439041u, 0xfe5163abu);

// The 64-bit product a·b as (low word, high word), from 16-bit halves.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

// The 32 bits of p (least significant word first) from bit `pos` up; pos in 0..=224.
fn bits32(p: ptr<function, array<u32, 8>>, pos: u32) -> u32 {
    let w = pos >> 5u;
    let s = pos & 31u;
    let low = (*p)[w] >> s;
    if (s == 0u) { return low; }
    return low | ((*p)[w + 1u] << (32u - s));
}

// x = (4k + q)·π/2 + r with |r| <= ~π/4: returns (r, q). Payne–Hanek in integer
// arithmetic for every |x| > π/4, so the reduction is exact at any magnitude and no
// float reassociation (lavapipe folds some) can undo a Cody–Waite split.
fn reduce_half_pi(x: f32) -> vec2<f32> {
    let a = abs(x);
    if (a <= 0.78539816) { return vec2<f32>(x, 0.0); }
    let bits = bitcast<u32>(a);
    let m = (bits & 0x7fffffu) | 0x800000u;       // a = m·2^e, m a 24-bit integer
    let e = i32(bits >> 23u) - 150;               // -24 <= e <= 104 here
    var p: array<u32, 8>;                          // m · (2/π · 2^224)
    var carry = 0u;
    for (var j = 0u; j < 7u; j++) {
        let w = mul_wide(m, TWO_OVER_PI[6u - j]);
        let lo = w.x + carry;
        carry = w.y + select(0u, 1u, lo < w.x);
        p[j] = lo;
    }
    p[7] = carry;
    // a·2/π has its units bit at bit 224 - e of p: take 2 integer bits (the quadrant)
    // and 62 fraction bits below them.
    let top = u32(226 - e);
    let hi = bits32(&p, top - 32u);
    let lo = bits32(&p, top - 64u);
    var q = hi >> 30u;
    var f_hi = (hi << 2u) | (lo >> 30u);
    var f_lo = lo << 2u;
    var sign = 1.0;
    if ((f_hi & 0x80000000u) != 0u) {             // fraction >= 1/2: the next quadrant, r < 0
        q = q + 1u;
        f_lo = ~f_lo + 1u;
        f_hi = ~f_hi + select(0u, 1u, f_lo == 0u);
        sign = -1.0;
    }
    let turns = f32(f_hi) * 2.3283064365386963e-10 + f32(f_lo) * 5.421010862427522e-20;
    var r = sign * turns * 1.5707963267948966;
    q = q & 3u;
    if (x < 0.0) {
        r = -r;
        q = (4u - q) & 3u;
    }
    return vec2<f32>(r, f32(q));
}

fn sin_poly(r: f32) -> f32 {                      // |r| <= π/4
    let z = r * r;
    return r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
}

fn cos_poly(r: f32) -> f32 {                      // |r| <= π/4
    let z = r * r;
    return 1.0 - 0.5 * z
        + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
}

// sin (which = 0), cos (1) or tan (2) of x.
fn trig_f32(x: f32, which: u32) -> f32 {
    if (is_nan(x) || is_inf(x)) { return nan(); }
    let rq = reduce_half_pi(x);
    let s = sin_poly(rq.x);
    let c = cos_poly(rq.x);
    let q = u32(rq.y);
    if (which == 2u) {
        return select(s / c, -c / s, (q & 1u) == 1u);
    }
    let k = (q + which) & 3u;                     // cos x = sin(x + π/2)
    switch k {
        case 0u: { return s; }
        case 1u: { return c; }
        case 2u: { return -s; }
        default: { return -c; }
    }
}

fn asin_f32(x: f32) -> f32 {
    let a = abs(x);
    if (is_nan(x) || a > 1.0) { return nan(); }
    var z: f32;
    var t: f32;
    let big = a > 0.5;
    if (big) {
        z = 0.5 * (1.0 - a);                      // exact: 1 - a by Sterbenz
        t = sqrt(z);
    } else {
        z = a * a;
        t = a;
    }
    var y = t + t * z * (1.6666752422e-1 + z * (7.4953002686e-2 + z * (4.5470025998e-2
        + z * (2.4181311049e-2 + z * 4.2163199048e-2))));
    if (big) { y = 1.5707963267948966 - 2.0 * y; }
    return select(y, -y, x < 0.0);
}

fn acos_f32(x: f32) -> f32 {
    if (is_nan(x) || abs(x) > 1.0) { return nan(); }
    if (x < -0.5) { return 3.141592653589793 - 2.0 * asin_f32(sqrt(0.5 * (1.0 + x))); }
    if (x > 0.5) { return 2.0 * asin_f32(sqrt(0.5 * (1.0 - x))); }
    return 1.5707963267948966 - asin_f32(x);
}

fn atan_f32(x: f32) -> f32 {
    if (is_nan(x)) { return x; }
    var a = abs(x);
    var base = 0.0;
    if (a > 2.414213562373095) {                  // tan 3π/8
        base = 1.5707963267948966;
        a = -1.0 / a;
    } else if (a > 0.4142135623730950) {          // tan π/8
        base = 0.7853981633974483;
        a = (a - 1.0) / (a + 1.0);
    }
    let z = a * a;
    let y = base + a + a * z * (-3.33329491539e-1 + z * (1.99777106478e-1
        + z * (-1.38776856032e-1 + z * 8.05374449538e-2)));
    return select(y, -y, x < 0.0);
}

// sinh (which = 0) or cosh (1): the series below 0.5 for sinh (no cancellation), else
// e^(a - ln 2) ± e^(-a - ln 2), which overflows only where the result does.
fn sinh_cosh_f32(x: f32, which: u32) -> f32 {
    if (is_nan(x)) { return x; }
    let a = abs(x);
    if (which == 0u && a < 0.5) {
        let z = x * x;
        return x + x * z * (1.0 / 6.0 + z * (1.0 / 120.0 + z * (1.0 / 5040.0
            + z * (1.0 / 362880.0 + z * (1.0 / 39916800.0)))));
    }
    let up = exp(a - 0.6931471805599453);
    let down = exp(-a - 0.6931471805599453);
    if (which == 1u) { return up + down; }
    return select(up - down, down - up, x < 0.0);
}

fn asinh_f32(x: f32) -> f32 {
    if (is_nan(x) || is_inf(x)) { return x; }
    let a = abs(x);
    var y: f32;
    if (a > 4096.0) {
        y = log(a) + 0.6931471805599453;          // √(a² + 1) = a in f32
    } else {
        y = log1p_f32(a + a * a / (1.0 + sqrt(1.0 + a * a)));
    }
    return select(y, -y, x < 0.0);
}

fn acosh_f32(x: f32) -> f32 {
    if (is_nan(x) || x < 1.0) { return nan(); }
    if (is_inf(x)) { return x; }
    if (x > 4096.0) { return log(x) + 0.6931471805599453; }
    let t = x - 1.0;                               // exact near 1 (Sterbenz)
    return log1p_f32(t + sqrt(t * (x + 1.0)));
}

fn atanh_f32(x: f32) -> f32 {
    let a = abs(x);
    if (is_nan(x) || a > 1.0) { return nan(); }
    if (a == 1.0) { return x * bitcast<f32>(0x7f800000u); }
    let y = 0.5 * log1p_f32(2.0 * a / (1.0 - a));
    return select(y, -y, x < 0.0);
}

fn unary_op(x: f32) -> f32 {
    switch OP {
        case 0u: { return -x; }                                  // neg
        case 1u: { return abs(x); }                              // abs
        case 2u: { return exp(x); }                              // exp
        case 3u: {                                               // log
            if (x == 0.0) { return bitcast<f32>(0xff800000u); }
            if (x < 0.0) { return nan(); }
            return log(x);
        }
        case 4u: {                                               // sqrt
            if (x < 0.0) { return nan(); }
            return sqrt(x);
        }
        case 5u: { return x * x; }                               // square
        case 6u: { return max(x, 0.0); }                         // relu
        case 7u: { return 1.0 / (1.0 + exp(-x)); }               // sigmoid
        case 8u: { return tanh_f32(x); }                         // tanh
        case 9u: { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)); } // gelu (erf)
        case 10u: {                                              // gelu_grad: Φ(x) + x·φ(x)
            let cdf = 0.5 * (1.0 + erf_approx(x * 0.70710678118654752));
            return cdf + x * exp(-0.5 * x * x) * 0.39894228040143268;
        }
        case 11u: { return erf_f32(x); }                         // erf
        case 12u: { return floor(x); }                           // floor
        case 13u: { return ceil(x); }                            // ceil
        case 14u: { return log1p_f32(x); }                       // log1p
        case 15u: { return round(x); }                           // round (WGSL: halves to even)
        case 16u: { return trig_f32(x, 0u); }                    // sin
        case 17u: { return trig_f32(x, 1u); }                    // cos
        case 18u: { return trig_f32(x, 2u); }                    // tan
        case 19u: { return asin_f32(x); }                        // asin
        case 20u: { return acos_f32(x); }                        // acos
        case 21u: { return atan_f32(x); }                        // atan
        case 22u: { return sinh_cosh_f32(x, 0u); }               // sinh
        case 23u: { return sinh_cosh_f32(x, 1u); }               // cosh
        case 24u: { return asinh_f32(x); }                       // asinh
        case 25u: { return acosh_f32(x); }                       // acosh
        case 26u: { return atanh_f32(x); }                       // atanh
        default: { return nan(); }
    }
}

fn is_inf(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u;
}

fn pow_ieee(x: f32, y: f32) -> f32 {
    // WGSL's pow is undefined for x <= 0 and at infinities; follow C/NumPy for those cases.
    if (y == 0.0 || x == 1.0) { return 1.0; }
    if (is_nan(x) || is_nan(y)) { return nan(); }
    let inf = bitcast<f32>(0x7f800000u);
    if (is_inf(y)) {                                // |x| vs 1 decides; |x| == 1 gives 1
        if (abs(x) == 1.0) { return 1.0; }
        return select(0.0, inf, (abs(x) > 1.0) == (y > 0.0));
    }
    let odd = abs(y) < 16777216.0 && y == floor(y) && (i32(y) & 1) == 1;
    if (is_inf(x) || x == 0.0) {                    // ±inf or ±0 to the y: inf or 0,
        let big = is_inf(x) == (y > 0.0);           // negative for odd y and a negative x
        let m = select(0.0, inf, big);
        return select(m, -m, odd && (bitcast<u32>(x) & 0x80000000u) != 0u);
    }
    if (x > 0.0) { return pow(x, y); }
    if (y != floor(y)) { return nan(); }
    let m = pow(-x, y);
    return select(m, -m, odd);
}

fn binary_op(x: f32, y: f32) -> f32 {
    switch OP {
        case 0u: { return x + y; }                               // add
        case 1u: { return x - y; }                               // sub
        case 2u: { return x * y; }                               // mul
        case 3u: { return x / y; }                               // div
        case 4u: {                                               // maximum (NaN propagates)
            if (is_nan(x) || is_nan(y)) { return nan(); }
            return max(x, y);
        }
        case 5u: {                                               // minimum (NaN propagates)
            if (is_nan(x) || is_nan(y)) { return nan(); }
            return min(x, y);
        }
        case 6u: { return pow_ieee(x, y); }                      // pow
        case 7u: { return select(0.0, 1.0, x == y); }            // eq
        // ne: true with a NaN operand (IEEE); naga lowers != to an ordered compare.
        case 8u: { return select(0.0, 1.0, is_nan(x) || is_nan(y) || x != y); }
        case 9u: { return select(0.0, 1.0, x < y); }             // lt
        case 10u: { return select(0.0, 1.0, x <= y); }           // le
        case 11u: { return select(0.0, 1.0, x > y); }            // gt
        case 12u: { return select(0.0, 1.0, x >= y); }           // ge
        // keep_where / keep_where_not: a selection, never arithmetic with the mask, so the
        // unselected side's inf or NaN cannot leak (inf·0 = NaN); a NaN mask is non-zero.
        case 13u: { return select(0.0, x, is_nan(y) || y != 0.0); } // keep_where
        case 14u: { return select(0.0, x, y == 0.0); }           // keep_where_not
        default: { return nan(); }
    }
}

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// Coordinates (c0, c1, c2) of flat element e in the merged rank-3 shape params.dims[0].xyz
// (the broadcast3 entries here and in elementwise_f16.wgsl): two divisions.
fn coords3(e: u32) -> vec3<u32> {
    let d = params.dims[0];
    let row = e / d.z;
    let c0 = row / d.y;
    return vec3<u32>(c0, row - c0 * d.y, e - row * d.z);
}

fn dim_at(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

@compute @workgroup_size(256)
fn unary_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    out2[i] = unary_op(a[i]);
}

@compute @workgroup_size(256)
fn scalar_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    if (params.scalar_lhs == 1u) {
        out2[i] = binary_op(params.scalar, a[i]);
    } else {
        out2[i] = binary_op(a[i], params.scalar);
    }
}

@compute @workgroup_size(256)
fn binary_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    out3[i] = binary_op(a[i], b[i]);
}

@compute @workgroup_size(256)
fn binary_broadcast_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    var rem = params.offsets.x + i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(params.rank) - 1; d >= 0; d = d - 1) {
        let size = dim_at(params.dims, u32(d));
        let coord = rem % size;
        rem = rem / size;
        ia = ia + coord * dim_at(params.a_strides, u32(d));
        ib = ib + coord * dim_at(params.b_strides, u32(d));
    }
    out3[i] = binary_op(a[ia - params.offsets.y], b[ib - params.offsets.z]);
}

// Broadcasting over a shape merged on the host to (d0, d1, d2) = dims[0].xyz (adjacent
// dims whose a- and b-strides both chain are one dim; padded with leading 1s). The
// generic entry's per-dim loop of `%` and `/` with dynamically indexed uniforms costs
// ~10x a same-shape add on lavapipe (integer division is scalarised); here an
// invocation pays two divisions for RUN elements and steps along the row by the
// innermost strides. Same binary_op, so results are bit-identical to the generic entry.
@compute @workgroup_size(256)
fn binary_broadcast3_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid) * RUN;
    if (i >= params.n) { return; }
    let sa = params.a_strides[0];
    let sb = params.b_strides[0];
    let c = coords3(params.offsets.x + i);
    var ia = c.x * sa.x + c.y * sa.y + c.z * sa.z - params.offsets.y;
    var ib = c.x * sb.x + c.y * sb.y + c.z * sb.z - params.offsets.z;
    for (var k = 0u; k < RUN; k = k + 1u) {
        out3[i + k] = binary_op(a[ia], b[ib]);
        ia = ia + sa.z;
        ib = ib + sb.z;
    }
}
