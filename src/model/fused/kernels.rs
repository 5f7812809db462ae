//! The CPU kernels of the fused training step: matrix products (the `gemm` crate, which
//! burn-flex itself calls), RMSNorm, rotary positions, causal grouped-query attention, SwiGLU
//! and the cross-entropy, each with its backward pass.
//!
//! Every buffer is a plain row-major `f32` slice owned by the caller, so nothing here allocates
//! per step except the per-task `[t, t]` scratch of the attention backward. Work is split over
//! rows (element-wise kernels) or over (example, head) pairs (attention) with rayon; every
//! reduction is summed in a fixed order, so a step gives the same bits on every run with the same
//! thread count.

use gemm::Parallelism;
use rayon::prelude::*;

/// Rows per rayon task in the element-wise kernels: large enough that scheduling costs nothing
/// next to the work, small enough that two cores share a 1536-row demo batch evenly.
const ROW_BLOCK: usize = 32;

/// A raw pointer handed to rayon tasks that write disjoint elements of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only dereferenced by tasks that write disjoint element sets (documented
// at each use), and the buffer outlives the parallel region that uses it.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared references only copy the pointer; writes through it go to
// disjoint elements.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. A method, not a field access, so closures capture the whole `SendPtr`
    /// (which is `Send`) rather than the raw pointer inside it.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A read-only strided matrix: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) ptr: *const f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}
// SAFETY: views are only read, and the buffers they point into outlive every parallel region.
unsafe impl Send for View {}
// SAFETY: as for `Send`: nothing writes through a view.
unsafe impl Sync for View {}

impl View {
    /// The sub-matrix starting at element `(i, j)`, same strides. Pointer arithmetic only: the
    /// caller's extents decide what is read.
    fn at(self, i: usize, j: usize) -> View {
        View {
            ptr: self
                .ptr
                .wrapping_offset(i as isize * self.rs + j as isize * self.cs),
            ..self
        }
    }
}

/// `dst[m, n] (+)= scale * a[m, k] * b[k, n]` on strided operands (`dst` has column stride 1
/// and row stride `dst_rs`).
///
/// # Safety
/// Every pointer must be valid for the extents its strides and sizes describe, and `dst` must
/// not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
    parallel: bool,
) {
    let par = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: forwarded from the caller. gemm's convention is (column stride, row stride).
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, dst_rs, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0, scale,
            false, false, false, par,
        );
    }
}

fn rows(ptr: &[f32], cols: usize) -> View {
    View {
        ptr: ptr.as_ptr(),
        rs: cols as isize,
        cs: 1,
    }
}

fn transposed(ptr: &[f32], cols: usize) -> View {
    View {
        ptr: ptr.as_ptr(),
        rs: 1,
        cs: cols as isize,
    }
}

/// Which operand of [`mm`] is read transposed. All buffers are row-major.
#[derive(Clone, Copy)]
pub(crate) enum Mm {
    /// `a[m, k] * b[k, n]`.
    NN,
    /// `a[m, k] * b^T`, `b` stored `[n, k]`.
    NT,
    /// `a^T * b[k, n]`, `a` stored `[k, m]` (the weight gradient of a projection: inputs
    /// transposed times output gradients).
    TN,
}

/// `dst[m, n] (+)= a * b` for whole row-major buffers, read as `layout` says. The one place
/// the projections' extents are checked before calling gemm.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    layout: Mm,
    m: usize,
    k: usize,
    n: usize,
    acc: bool,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    let (av, bv) = match layout {
        Mm::NN => (rows(a, k), rows(b, n)),
        Mm::NT => (rows(a, k), transposed(b, k)),
        Mm::TN => (transposed(a, m), rows(b, n)),
    };
    // SAFETY: the extents were checked above; `dst` is a distinct &mut borrow.
    unsafe {
        gemm_strided(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n as isize,
            acc,
            av,
            bv,
            1.0,
            true,
        )
    }
}

/// `e^x` in f32 without a libm call, so loops over it vectorise: `x = n ln2 + r` with
/// `|r| <= ln2 / 2`, `e^r` from the Cephes `expf` polynomial, `2^n` written into the exponent
/// bits. Relative error about 2e-7 (1-2 ulp); inputs below -87.3 give a tiny positive number
/// instead of a subnormal, inputs above 88.7 saturate (never reached: callers subtract the row
/// maximum first, or pass `-g` of a finite gate).
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with plain adds.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Sum with eight independent accumulators: the compiler may not reorder a single f32 sum,
/// so a plain `.sum()` runs one add at a time; eight lanes let it use vector adds.
#[inline(always)]
fn lane_sum(x: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0.0f32; 8];
    for (i, v) in x.enumerate() {
        acc[i & 7] += v;
    }
    acc.iter().sum()
}

/// `sum(a[i] * b[i])` over eight accumulators (see [`lane_sum`]).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// RMSNorm forward over rows of width `d`: `out = x / sqrt(mean(x^2) + eps) * g`; keeps the
/// reciprocal root per row in `r` for the backward pass.
pub(crate) fn rmsnorm_fwd(x: &[f32], g: &[f32], eps: f32, out: &mut [f32], r: &mut [f32]) {
    let d = g.len();
    out.par_chunks_mut(ROW_BLOCK * d)
        .zip(r.par_chunks_mut(ROW_BLOCK))
        .zip(x.par_chunks(ROW_BLOCK * d))
        .for_each(|((out, r), x)| {
            for ((o, ri), xr) in out.chunks_mut(d).zip(r.iter_mut()).zip(x.chunks(d)) {
                let ms = dot(xr, xr) / d as f32;
                let inv = 1.0 / (ms + eps).sqrt();
                *ri = inv;
                for ((o, &v), &gv) in o.iter_mut().zip(xr).zip(g) {
                    *o = v * inv * gv;
                }
            }
        });
}

/// RMSNorm backward: adds the input gradient to `dx` and writes the scale gradient to `dg`.
/// With `u = dy * g`: `dx += r * u - x * r^3 * mean(u * x)`; `dg = sum over rows of dy * x * r`.
pub(crate) fn rmsnorm_bwd(
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    g: &[f32],
    dx: &mut [f32],
    dg: &mut [f32],
) {
    let d = g.len();
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(ROW_BLOCK * d)
        .zip(dy.par_chunks(ROW_BLOCK * d))
        .zip(x.par_chunks(ROW_BLOCK * d))
        .zip(r.par_chunks(ROW_BLOCK))
        .map(|(((dx, dy), x), r)| {
            let mut part = vec![0.0f32; d];
            for (((dxr, dyr), xr), &ri) in
                dx.chunks_mut(d).zip(dy.chunks(d)).zip(x.chunks(d)).zip(r)
            {
                let ugx = lane_sum(dyr.iter().zip(xr).zip(g).map(|((&a, &b), &c)| a * b * c));
                let c = ri * ri * ri * ugx / d as f32;
                for ((((o, &dyv), &xv), &gv), p) in
                    dxr.iter_mut().zip(dyr).zip(xr).zip(g).zip(part.iter_mut())
                {
                    *o += ri * dyv * gv - xv * c;
                    *p += dyv * xv * ri;
                }
            }
            part
        })
        .collect();
    dg.fill(0.0);
    // Summed in block order, whatever thread computed each block.
    for part in &partials {
        for (o, p) in dg.iter_mut().zip(part) {
            *o += p;
        }
    }
}

/// Rotary positions in place on `x` laid out `[rows, heads, hd]`, row `i` at position
/// `i % t`; `cos`/`sin` are `[max_seq_len, hd / 2]`. Hugging Face's `rotate_half` convention:
/// `(a, b) -> (a cos - b sin, b cos + a sin)` for the two halves of each head. `inverse` applies
/// the transposed rotation, which is the backward pass.
pub(crate) fn rope(
    x: &mut [f32],
    t: usize,
    heads: usize,
    hd: usize,
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = hd / 2;
    let width = heads * hd;
    x.par_chunks_mut(width).enumerate().for_each(|(row, xr)| {
        let pos = row % t;
        let c = &cos[pos * half..(pos + 1) * half];
        let s = &sin[pos * half..(pos + 1) * half];
        for head in xr.chunks_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (av, bv) = (a[i], b[i]);
                if inverse {
                    a[i] = av * c[i] + bv * s[i];
                    b[i] = bv * c[i] - av * s[i];
                } else {
                    a[i] = av * c[i] - bv * s[i];
                    b[i] = bv * c[i] + av * s[i];
                }
            }
        }
    });
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) hd: usize,
    /// Rows per causal block ([`CAUSAL_BLOCK`] in training; `t` or more computes the whole
    /// `[t, t]` square, what these kernels did before the blocks).
    pub(crate) block: usize,
}

impl AttnShape {
    fn q_width(&self) -> usize {
        self.heads * self.hd
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.hd
    }
}

/// Causal grouped-query attention forward. `q` is `[b*t, heads*hd]`, `k`/`v` are
/// `[b*t, kv_heads*hd]` (query head `h` reads kv head `h / (heads / kv_heads)`, read in place:
/// no repeated copies). Writes the softmax probabilities `p` (`[b, heads, t, t]`, zero above the
/// diagonal, kept for the backward pass) and the output `o` (`[b*t, heads*hd]`).
pub(crate) fn attention_fwd(
    s: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &mut [f32],
    o: &mut [f32],
) {
    let (t, hd) = (s.t, s.hd);
    let (qw, kw) = (s.q_width() as isize, s.kv_width() as isize);
    let rep = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(p.len() >= s.b * s.heads * t * t && o.len() >= s.b * t * s.heads * hd);
    assert!(q.len() >= s.b * t * s.heads * hd && k.len() >= s.b * t * s.kv_heads * hd);
    assert!(v.len() >= k.len().min(s.b * t * s.kv_heads * hd));
    let out = SendPtr(o.as_mut_ptr());
    p.par_chunks_mut(t * t)
        .take(s.b * s.heads)
        .enumerate()
        .for_each(|(task, pt)| {
            let (bi, h) = (task / s.heads, task % s.heads);
            let kvh = h / rep;
            let qv = View {
                ptr: q[(bi * t) * qw as usize + h * hd..].as_ptr(),
                rs: qw,
                cs: 1,
            };
            let k_t = View {
                ptr: k[(bi * t) * kw as usize + kvh * hd..].as_ptr(),
                rs: 1,
                cs: kw,
            };
            let vv = View {
                ptr: v[(bi * t) * kw as usize + kvh * hd..].as_ptr(),
                rs: kw,
                cs: 1,
            };
            // Row block [r0, r1) attends to keys 0..r1 only: the scores and products right of
            // that are all masked, so skipping them saves close to half of attention's FLOPs at
            // long sequences (what PyTorch's causal kernel does too).
            for (r0, r1) in causal_blocks(t, s.block) {
                let (rows_n, keys) = (r1 - r0, r1);
                // SAFETY: the views stay inside q, k and v (asserted sizes); `pt` is this task's
                // own [t, t] block and rows r0..r1 of it hold `keys <= t` columns.
                unsafe {
                    gemm_strided(
                        rows_n,
                        keys,
                        hd,
                        pt[r0 * t..].as_mut_ptr(),
                        t as isize,
                        false,
                        qv.at(r0, 0),
                        k_t,
                        scale,
                        false,
                    )
                };
                // The softmax writes every column of its rows, zeros past the diagonal, so `p`
                // is fully defined for the backward pass.
                causal_softmax_rows(&mut pt[r0 * t..r1 * t], r0, t);
                // SAFETY: task (bi, h) writes only rows bi*t.. of head h's columns of `o`:
                // disjoint from every other task's elements.
                unsafe {
                    let dst = out.get().add((bi * t + r0) * qw as usize + h * hd);
                    gemm_strided(
                        rows_n,
                        hd,
                        keys,
                        dst,
                        qw,
                        false,
                        rows(&pt[r0 * t..], t),
                        vv,
                        1.0,
                        false,
                    );
                }
            }
        });
}

/// Rows per block of the causal attention: row block `[r0, r1)` only needs keys `0..r1`. 64
/// keeps each product large enough for gemm's kernels (head widths are 64 in the models here)
/// while skipping 3/8 of the work at 256 positions.
pub(crate) const CAUSAL_BLOCK: usize = 64;

/// The row blocks `[r0, r1)` of a `t`-position causal attention, `block` rows each.
fn causal_blocks(t: usize, block: usize) -> impl Iterator<Item = (usize, usize)> {
    let block = block.max(1);
    (0..t)
        .step_by(block)
        .map(move |r0| (r0, (r0 + block).min(t)))
}

/// Softmax of each row of `rows` (rows `first..` of a `[t, t]` block: row `first + i` covers
/// columns `0..=first + i`); zero elsewhere.
fn causal_softmax_rows(rows: &mut [f32], first: usize, t: usize) {
    for (i, row) in rows.chunks_mut(t).enumerate() {
        let (live, dead) = row.split_at_mut(first + i + 1);
        let mx = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in live.iter_mut() {
            *x = exp_fast(*x - mx);
        }
        let inv = 1.0 / lane_sum(live.iter().copied());
        live.iter_mut().for_each(|x| *x *= inv);
        dead.fill(0.0);
    }
}

/// Attention backward from the output gradient `d_o` (`[b*t, heads*hd]`): writes `dq`, and `dk`,
/// `dv` (each kv head's gradient summed over the query heads that share it). One task per
/// (example, kv head), so no two tasks touch the same gradient elements.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_bwd(
    s: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    d_o: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, hd) = (s.t, s.hd);
    let (qw, kw) = (s.q_width(), s.kv_width());
    let rep = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let block = s.block.max(1);
    let n = s.b * t;
    assert!(dq.len() >= n * qw && dk.len() >= n * kw && dv.len() >= n * kw);
    assert!(q.len() >= n * qw && d_o.len() >= n * qw && k.len() >= n * kw && v.len() >= n * kw);
    assert!(p.len() >= s.b * s.heads * t * t);
    let (dqp, dkp, dvp) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    (0..s.b * s.kv_heads).into_par_iter().for_each_init(
        || vec![0.0f32; t * t],
        |dp, task| {
            let (bi, kvh) = (task / s.kv_heads, task % s.kv_heads);
            let kv_off = (bi * t) * kw + kvh * hd;
            let kv_rows = View {
                ptr: k[kv_off..].as_ptr(),
                rs: kw as isize,
                cs: 1,
            };
            let v_t = View {
                ptr: v[kv_off..].as_ptr(),
                rs: 1,
                cs: kw as isize,
            };
            for j in 0..rep {
                let h = kvh * rep + j;
                let q_off = (bi * t) * qw + h * hd;
                let pt = &p[(bi * s.heads + h) * t * t..][..t * t];
                let do_rows = View {
                    ptr: d_o[q_off..].as_ptr(),
                    rs: qw as isize,
                    cs: 1,
                };
                let q_rows = View {
                    ptr: q[q_off..].as_ptr(),
                    rs: qw as isize,
                    cs: 1,
                };
                // Each product is cut to the causal blocks, as in the forward pass: row block
                // [r0, r1) of dP and dQ needs keys 0..r1; column block [c0, c1) of dV and dK
                // needs query rows c0..t (P and dS are zero above the diagonal).
                // SAFETY: reads stay inside the asserted extents; writes go to this task's own
                // scratch `dp`, to head h's columns of rows bi*t.. of dq (h belongs to this task's
                // kv group only), and to kv head kvh's columns of rows bi*t.. of dk and dv (this
                // task's kv head). Blocks write disjoint rows.
                unsafe {
                    for (r0, r1) in causal_blocks(t, s.block) {
                        // dP = dO V^T.
                        gemm_strided(
                            r1 - r0,
                            r1,
                            hd,
                            dp[r0 * t..].as_mut_ptr(),
                            t as isize,
                            false,
                            do_rows.at(r0, 0),
                            v_t,
                            1.0,
                            false,
                        );
                    }
                    // dV (+)= P^T dO.
                    lower_transposed_product(s, pt, do_rows, dvp.get().add(kv_off), kw, j > 0);
                }
                // dS = P * (dP - rowsum(P * dP)), times the score scale. Row i reads only
                // columns 0..=i of dP, all inside its row block's product. The products below
                // read row i of dS up to the end of its row block, so only that stretch past
                // the diagonal needs zeros; columns beyond it are never read.
                for i in 0..t {
                    let block_end = (i - i % block + block).min(t);
                    let pr = &pt[i * t..i * t + i + 1];
                    let dr = &mut dp[i * t..i * t + block_end];
                    let row_dot = dot(pr, &dr[..=i]);
                    for (d, &pv) in dr[..=i].iter_mut().zip(pr) {
                        *d = pv * (*d - row_dot) * scale;
                    }
                    dr[i + 1..].fill(0.0);
                }
                // SAFETY: as above.
                unsafe {
                    for (r0, r1) in causal_blocks(t, s.block) {
                        // dQ = dS K.
                        gemm_strided(
                            r1 - r0,
                            hd,
                            r1,
                            dqp.get().add(q_off + r0 * qw),
                            qw as isize,
                            false,
                            rows(dp, t).at(r0, 0),
                            kv_rows,
                            1.0,
                            false,
                        );
                    }
                    // dK (+)= dS^T Q.
                    lower_transposed_product(s, dp, q_rows, dkp.get().add(kv_off), kw, j > 0);
                }
            }
        },
    );
}

/// `dst (+)= m^T x` for a `[t, t]` matrix `m` that is zero above the diagonal (P for dV, dS
/// for dK) and `x` of `t` rows and `hd` columns, one causal column block at a time: rows
/// `c0..c1` of `dst` only need rows `c0..t` of `m` and `x`.
///
/// # Safety
/// `x` must be valid for `t` rows of `hd` columns and `dst` for `t` rows of `hd` columns at row
/// stride `dst_rs`, not overlapping `m` or `x`.
unsafe fn lower_transposed_product(
    s: AttnShape,
    m: &[f32],
    x: View,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
) {
    let t = s.t;
    for (c0, c1) in causal_blocks(t, s.block) {
        // SAFETY: forwarded from the caller; the block stays inside `m`'s [t, t] extent.
        unsafe {
            gemm_strided(
                c1 - c0,
                s.hd,
                t - c0,
                dst.add(c0 * dst_rs),
                dst_rs as isize,
                accumulate,
                transposed(m, t).at(c0, c0),
                x.at(c0, 0),
                1.0,
                false,
            )
        };
    }
}

/// SwiGLU forward: `h = silu(g) * u`, element-wise.
pub(crate) fn swiglu_fwd(g: &[f32], u: &[f32], h: &mut [f32]) {
    h.par_chunks_mut(4096)
        .zip(g.par_chunks(4096))
        .zip(u.par_chunks(4096))
        .for_each(|((h, g), u)| {
            for ((h, &gv), &uv) in h.iter_mut().zip(g).zip(u) {
                *h = gv / (1.0 + exp_fast(-gv)) * uv;
            }
        });
}

/// SwiGLU backward: from `dh` (overwritten with the gate gradient) to `du`.
/// `d silu(g) / dg = s (1 + g (1 - s))` with `s = sigmoid(g)`.
pub(crate) fn swiglu_bwd(g: &[f32], u: &[f32], dh_dg: &mut [f32], du: &mut [f32]) {
    dh_dg
        .par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(g.par_chunks(4096))
        .zip(u.par_chunks(4096))
        .for_each(|(((dh, du), g), u)| {
            for (((dh, du), &gv), &uv) in dh.iter_mut().zip(du.iter_mut()).zip(g).zip(u) {
                let s = 1.0 / (1.0 + exp_fast(-gv));
                *du = *dh * gv * s;
                *dh *= uv * s * (1.0 + gv * (1.0 - s));
            }
        });
}

/// Per-position negative log-likelihood of `targets` under `logits` (`[rows, vocab]`), times
/// the weights `w` (0 where a position predicts nothing). With `grad_scale = Some(c)` the logits
/// are replaced by the gradient of `c * sum(w * nll)`; rows of weight 0 become zero.
/// Returns the weighted NLL of every row.
pub(crate) fn cross_entropy(
    logits: &mut [f32],
    vocab: usize,
    targets: &[usize],
    w: &[f32],
    grad_scale: Option<f32>,
) -> Vec<f32> {
    let mut nll = vec![0.0f32; targets.len()];
    logits
        .par_chunks_mut(vocab)
        .zip(nll.par_iter_mut())
        .zip(targets.par_iter().zip(w.par_iter()))
        .for_each(|((row, out), (&y, &wt))| {
            if wt == 0.0 {
                if grad_scale.is_some() {
                    row.fill(0.0);
                }
                return;
            }
            let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum = lane_sum(row.iter().map(|&x| exp_fast(x - mx)));
            let lse = mx + sum.ln();
            *out = wt * (lse - row[y]);
            if let Some(c) = grad_scale {
                let k = c * wt;
                for x in row.iter_mut() {
                    *x = exp_fast(*x - lse) * k;
                }
                row[y] -= k;
            }
        });
    nll
}

/// Sum of squares of `x`, in f64, summed block by block in a fixed order.
pub(crate) fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(1 << 16)
        .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
        .collect();
    parts.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_fast(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 5e-7, "largest relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(-1000.0) >= 0.0 && exp_fast(-1000.0) < 1e-37);
    }

    #[test]
    fn lane_sums_equal_plain_sums_up_to_rounding() {
        let a: Vec<f32> = (0..1037)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..1037)
            .map(|i| ((i * 13 % 89) as f32 - 44.0) / 5.0)
            .collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
        assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-3 * plain.abs().max(1.0));
        let plain: f64 = a.iter().map(|&x| f64::from(x)).sum();
        assert!((f64::from(lane_sum(a.iter().copied())) - plain).abs() < 1e-3);
    }
}
