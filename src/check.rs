//! `selfish check`: every kernel on the GPU against its CPU twin, over a fixed set of shapes.
//!
//! A case is a tiny program: buffers with random contents, a list of ops, and the buffers to
//! compare. Backward kernels run after their forward inside the same case so their saved
//! inputs (LayerNorm statistics, attention probabilities) are consistent.

use anyhow::Result;
use serde::Serialize;

use crate::kernels::Target;
use crate::kernels::{adamw, attention, embedding, matmul, sampled_loss, Op};
use crate::loss::Loss;
use crate::rng::Rng;
use crate::runtime::{Backend, Buf, CpuBackend, Dtype, GpuBackend};

/// How a buffer starts.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zero,
    /// N(0, s²)
    Normal(f32),
    /// Uniform in [lo, hi).
    Uniform(f32, f32),
    /// Uniform integers in [0, n).
    Tokens(u32),
    /// A constant.
    Fill(f32),
    /// Whole numbers in [0, n) as f32: many exact ties.
    Steps(u32),
    /// A `sampled_loss::cdf` table over `len` tokens with skewed random weights, ~20% zero.
    NoiseCdf,
}

pub struct BufSpec {
    pub label: &'static str,
    pub len: usize,
    pub dtype: Dtype,
    pub init: Init,
}

/// Makes a case's ops from its allocated buffers.
pub type OpBuilder = Box<dyn Fn(&[Buf]) -> Vec<Op>>;

/// One row of the report.
pub struct Case {
    /// Kernel name as in `shaders/<op>.wgsl` plus the entry or direction.
    pub op: &'static str,
    pub shape: String,
    pub bufs: Vec<BufSpec>,
    /// Builds the ops from the allocated buffers (same order as `bufs`).
    pub ops: OpBuilder,
    /// Indices into `bufs` to compare.
    pub outputs: Vec<usize>,
    /// Allowed max |gpu - cpu| relative to max |cpu| of that output.
    pub tol: f64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Row {
    pub op: String,
    pub shape: String,
    pub max_abs_err: f64,
    pub max_rel_err: f64,
    pub tol: f64,
    pub ok: bool,
}

fn f(label: &'static str, len: usize, init: Init) -> BufSpec {
    BufSpec {
        label,
        len,
        dtype: Dtype::F32,
        init,
    }
}

fn u(label: &'static str, len: usize, init: Init) -> BufSpec {
    BufSpec {
        label,
        len,
        dtype: Dtype::U32,
        init,
    }
}

fn out(label: &'static str, len: usize) -> BufSpec {
    f(label, len, Init::Zero)
}

fn matmul_name(variant: &str) -> &'static str {
    match variant {
        "naive" => "matmul naive",
        "tiled" => "matmul tiled",
        "reg" => "matmul reg",
        "sg_small" => "matmul sg_small",
        _ => "matmul sg",
    }
}

/// `batch` products of `[m x k]·[k x n]`, with `(trans_a, trans_b, accumulate)` flags.
fn matmul_case(variant: &'static str, [batch, m, n, k]: [u32; 4], flags: [bool; 3]) -> Case {
    let [trans_a, trans_b, accumulate] = flags;
    let s = matmul::Shape::dense(batch, [m, n, k], trans_a, trans_b, accumulate);
    let tag = |t: bool| if t { "ᵀ" } else { "" };
    let shape = format!(
        "{batch}x A{}[{m}x{k}] B{}[{k}x{n}]{}",
        tag(trans_a),
        tag(trans_b),
        if accumulate { " +=" } else { "" }
    );
    strided_case(variant, s, shape)
}

/// Attention's products on a `qkv [B, T, 3C]` buffer, per (batch, head) with 3 heads of
/// size 5: scores `alpha q kᵀ` (k a column slice, read transposed) and `dk += alpha attᵀ q`
/// written into the k columns of a wider buffer, whose other columns must survive.
/// Exercises offsets, two batch levels, C strides and alpha on every variant.
fn matmul_strided_cases(variant: &'static str) -> Vec<Case> {
    let (bb, t, nh, hd) = (2u32, 17u32, 3u32, 5u32);
    let c = nh * hd;
    let qkv = |off: u32| matmul::Layout {
        off,
        rs: 3 * c,
        cs: 1,
        bs: t * 3 * c,
        bs2: hd,
    };
    let att = matmul::Layout {
        off: 0,
        rs: t,
        cs: 1,
        bs: nh * t * t,
        bs2: t * t,
    };
    let kt = matmul::Layout {
        rs: 1,
        cs: 3 * c,
        ..qkv(c)
    };
    let scores = matmul::Shape {
        batch: bb * nh,
        inner: nh,
        m: t,
        n: t,
        k: hd,
        a: qkv(0),
        b: kt,
        c: att,
        alpha: 0.3,
        accumulate: false,
    };
    // dk[j, d] += 0.3 * sum_t att[t, j] q[t, d], into the k third of a [B, T, 3C] buffer
    let att_t = matmul::Layout {
        rs: 1,
        cs: t,
        ..att
    };
    let dk = matmul::Shape {
        batch: bb * nh,
        inner: nh,
        m: t,
        n: hd,
        k: t,
        a: att_t,
        b: qkv(0),
        c: qkv(c),
        alpha: 0.3,
        accumulate: true,
    };
    vec![
        strided_case(variant, scores, format!("{bb}x{nh} heads q·kᵀ [{t}x{hd}]")),
        strided_case(variant, dk, format!("{bb}x{nh} heads attᵀ·q += [{t}x{t}]")),
    ]
}

/// One product on buffers just long enough for its layouts.
fn strided_case(variant: &'static str, s: matmul::Shape, shape: String) -> Case {
    let [ea, eb, ec] = s.extents();
    let k = s.k;
    Case {
        op: matmul_name(variant),
        shape,
        bufs: vec![
            f("a", ea, Init::Normal(1.0)),
            f("b", eb, Init::Normal(1.0)),
            f(
                "c",
                ec,
                if s.accumulate {
                    Init::Normal(1.0)
                } else {
                    Init::Fill(7.0)
                },
            ),
        ],
        ops: Box::new(move |b| {
            vec![Op::MatmulVariant {
                variant,
                s,
                a: b[0],
                b: b[1],
                c: b[2],
            }]
        }),
        outputs: vec![2],
        tol: 2e-5 * (k as f64).sqrt().max(1.0),
    }
}

/// The fused loss with the kept set `spec` spells (a `--loss` softmax form), and its mean.
fn cross_entropy_case(rows: u32, cols: u32, spec: &str, logits: Init) -> Case {
    let keep = Loss::parse(spec)
        .and_then(|l| l.keep(cols as usize))
        .expect("a valid softmax-family loss")
        .expect("not sampled");
    let n = (rows * cols) as usize;
    Case {
        op: "cross_entropy fwd+bwd",
        shape: format!(
            "[{rows}x{cols}] {spec}{}",
            if matches!(logits, Init::Steps(_)) {
                " ties"
            } else {
                ""
            }
        ),
        bufs: vec![
            f("logits", n, logits),
            u("targets", rows as usize, Init::Tokens(cols)),
            out("losses", rows as usize),
            out("dlogits", n),
            out("mean", 1),
        ],
        ops: Box::new(move |b| {
            vec![
                Op::CrossEntropy {
                    rows,
                    cols,
                    keep,
                    scale: 1.0 / rows as f32,
                    logits: b[0],
                    targets: b[1],
                    losses: b[2],
                    dlogits: b[3],
                },
                Op::Mean {
                    n: rows,
                    x: b[2],
                    out: b[4],
                },
            ]
        }),
        outputs: vec![2, 3, 4],
        tol: 2e-5,
    }
}

/// The fixed shape set: odd sizes plus the paper model's (B=12, T=64, C=128, 4 heads, V=130).
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // matmul, every transpose form, odd and paper shapes (rows = B*T = 768)
    for &(batch, m, n, k) in &[
        (1, 1, 1, 1),
        (1, 3, 17, 5),
        (2, 17, 65, 33),
        (1, 65, 130, 257),
        (2, 68, 132, 36), // multiples of 4, not of any tile
    ] {
        for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
            for variant in matmul::VARIANTS {
                v.push(matmul_case(variant, [batch, m, n, k], [ta, tb, false]));
            }
        }
    }
    for d in matmul::VARIANTS {
        v.extend(matmul_strided_cases(d));
        v.push(matmul_case(d, [3, 17, 65, 33], [false, true, true]));
        v.push(matmul_case(d, [1, 768, 384, 128], [false, true, false])); // c_attn forward
        v.push(matmul_case(d, [1, 768, 130, 128], [false, true, false])); // lm head
        v.push(matmul_case(d, [1, 512, 128, 768], [true, false, false])); // c_fc weight grad
        v.push(matmul_case(d, [1, 768, 128, 512], [false, false, true])); // c_proj input grad
        v.push(matmul_case(d, [1, 65, 130, 257], [true, true, true]));
        // k past LOOP_LIMIT: split into dispatches that accumulate
        v.push(matmul_case(d, [1, 3, 5, 40_000], [true, false, false]));
    }

    for &(rows, cols) in &[(1u32, 1u32), (3, 17), (5, 257), (768, 130)] {
        let n = (rows * cols) as usize;
        v.push(Case {
            op: "softmax fwd+bwd",
            shape: format!("[{rows}x{cols}]"),
            bufs: vec![
                f("x", n, Init::Normal(3.0)),
                out("y", n),
                f("dy", n, Init::Normal(1.0)),
                out("dx", n),
            ],
            ops: Box::new(move |b| {
                vec![
                    Op::SoftmaxFwd {
                        rows,
                        cols,
                        x: b[0],
                        y: b[1],
                    },
                    Op::SoftmaxBwd {
                        rows,
                        cols,
                        y: b[1],
                        dy: b[2],
                        dx: b[3],
                    },
                ]
            }),
            outputs: vec![1, 3],
            tol: 1e-5,
        });
    }

    for &(rows, cols) in &[(3u32, 17u32), (7, 257), (768, 130)] {
        for margin in [None, Some(0.0), Some(0.5), Some(2.0), Some(8.0)] {
            let n = (rows * cols) as usize;
            let mtxt = margin.map_or("off".to_string(), |m| m.to_string());
            v.push(Case {
                op: "threshold mask",
                shape: format!("[{rows}x{cols}] m={mtxt}"),
                bufs: vec![
                    f("logits", n, Init::Normal(2.0)),
                    u("targets", rows as usize, Init::Tokens(cols)),
                    out("masked", n),
                ],
                ops: Box::new(move |b| {
                    vec![Op::ThresholdMask {
                        rows,
                        cols,
                        margin,
                        logits: b[0],
                        targets: b[1],
                        out: b[2],
                    }]
                }),
                outputs: vec![2],
                tol: 0.0,
            });
        }
    }

    // Every kept-set mode of the fused loss; counterpart needs an even (two-alphabet) vocab.
    for &(rows, cols) in &[(3u32, 17u32), (5, 34), (7, 257), (2, 1030), (768, 130)] {
        for spec in [
            "plain",
            "margin:0",
            "margin:0.5",
            "margin:2",
            "margin:8",
            "hard:1",
            "hard:5",
            "hard:300",
            "counterpart",
            "counterpart+margin:1",
            "hard:3+counterpart",
            "hard:4+margin:1",
        ] {
            if spec.contains("counterpart") && !cols.is_multiple_of(2) {
                continue;
            }
            v.push(cross_entropy_case(rows, cols, spec, Init::Normal(2.0)));
        }
        // Drops exactly one non-target: the last K that needs ranking.
        let one_less = format!("hard:{}", cols.saturating_sub(2).max(1));
        v.push(cross_entropy_case(rows, cols, &one_less, Init::Normal(2.0)));
    }
    // Whole-number logits tie everywhere: hard:K must cut ties by index on both sides.
    for &(rows, cols) in &[(7u32, 258u32), (3, 1030), (768, 130)] {
        for spec in ["hard:5", "hard:3+counterpart", "hard:20+margin:1"] {
            v.push(cross_entropy_case(rows, cols, spec, Init::Steps(4)));
        }
    }

    for &(rows, cols, k) in &[
        (1u32, 1u32, 3u32),
        (3, 17, 1),
        (5, 34, 5),
        (2, 9, sampled_loss::MAX_K),
        (7, 257, 20),
        (768, 130, 5),
        (768, 130, 64),
    ] {
        let n = (rows * cols) as usize;
        v.push(Case {
            op: "sampled_loss fwd+bwd",
            shape: format!("[{rows}x{cols}] sampled:{k}"),
            bufs: vec![
                f("logits", n, Init::Normal(2.0)),
                u("targets", rows as usize, Init::Tokens(cols)),
                u("cdf", cols as usize, Init::NoiseCdf),
                u("seeds", 2, Init::Tokens(u32::MAX)),
                out("losses", rows as usize),
                out("dlogits", n),
                out("mean", 1),
            ],
            ops: Box::new(move |b| {
                vec![
                    Op::SampledLoss {
                        rows,
                        cols,
                        k,
                        scale: 1.0 / rows as f32,
                        logits: b[0],
                        targets: b[1],
                        cdf: b[2],
                        seeds: b[3],
                        losses: b[4],
                        dlogits: b[5],
                    },
                    Op::Mean {
                        n: rows,
                        x: b[4],
                        out: b[6],
                    },
                ]
            }),
            outputs: vec![4, 5, 6],
            tol: 2e-5,
        });
    }

    for &(rows, cols) in &[(1u32, 1u32), (3, 17), (5, 65), (768, 128)] {
        let n = (rows * cols) as usize;
        let r = rows as usize;
        // (dx accumulates, the residual add is fused in front)
        for (accumulate, fused) in [(false, false), (true, false), (true, true)] {
            v.push(Case {
                op: "layernorm fwd+bwd",
                shape: format!(
                    "[{rows}x{cols}]{}{}",
                    if fused { " x+b" } else { "" },
                    if accumulate { " dx+=" } else { "" }
                ),
                bufs: vec![
                    f("x", n, Init::Normal(2.0)),
                    f("w", cols as usize, Init::Uniform(0.5, 1.5)),
                    out("y", n),
                    out("mean", r),
                    out("rstd", r),
                    f("dy", n, Init::Normal(1.0)),
                    f(
                        "dx",
                        n,
                        if accumulate {
                            Init::Normal(1.0)
                        } else {
                            Init::Zero
                        },
                    ),
                    out("dw", cols as usize),
                    f("branch", n, Init::Normal(1.0)),
                    out("sum", n),
                ],
                ops: Box::new(move |b| {
                    let input = if fused { b[9] } else { b[0] };
                    vec![
                        Op::LayerNormFwd {
                            rows,
                            cols,
                            x: b[0],
                            residual: fused.then_some((b[8], b[9])),
                            w: b[1],
                            y: b[2],
                            mean: b[3],
                            rstd: b[4],
                        },
                        Op::LayerNormBwd {
                            rows,
                            cols,
                            accumulate,
                            x: input,
                            w: b[1],
                            mean: b[3],
                            rstd: b[4],
                            dy: b[5],
                            dx: b[6],
                            dw: b[7],
                        },
                    ]
                }),
                outputs: if fused {
                    vec![2, 3, 4, 6, 7, 9]
                } else {
                    vec![2, 3, 4, 6, 7]
                },
                tol: 1e-4,
            });
        }
    }

    for &n in &[1u32, 3, 257, 768 * 512] {
        let nu = n as usize;
        v.push(Case {
            op: "gelu fwd+bwd",
            shape: format!("[{n}]"),
            bufs: vec![
                f("x", nu, Init::Normal(3.0)),
                out("y", nu),
                f("dy", nu, Init::Normal(1.0)),
                out("dx", nu),
            ],
            ops: Box::new(move |b| {
                vec![
                    Op::GeluFwd {
                        n,
                        x: b[0],
                        y: b[1],
                    },
                    Op::GeluBwd {
                        n,
                        x: b[0],
                        dy: b[2],
                        dx: b[3],
                    },
                ]
            }),
            outputs: vec![1, 3],
            tol: 1e-6,
        });
    }

    for &(bb, t, c, nh) in &[
        (1u32, 1u32, 4u32, 1u32),
        (2, 5, 12, 3),
        (2, 17, 30, 5),
        (12, 64, 128, 4),
    ] {
        let s = attention::Shape { b: bb, t, c, nh };
        let (bu, tu, cu, hu) = (bb as usize, t as usize, c as usize, nh as usize);
        v.push(Case {
            op: "attention fwd+bwd",
            shape: format!("B={bb} T={t} C={c} nh={nh}"),
            bufs: vec![
                f("qkv", bu * tu * 3 * cu, Init::Normal(1.0)),
                out("att", bu * hu * tu * tu),
                out("y", bu * tu * cu),
                f("dy", bu * tu * cu, Init::Normal(1.0)),
                out("datt", bu * hu * tu * tu),
                out("dqkv", bu * tu * 3 * cu),
            ],
            ops: Box::new(move |b| {
                vec![
                    Op::AttentionFwd {
                        s,
                        qkv: b[0],
                        att: b[1],
                        y: b[2],
                    },
                    Op::AttentionBwd {
                        s,
                        qkv: b[0],
                        att: b[1],
                        dy: b[3],
                        datt: b[4],
                        dqkv: b[5],
                    },
                ]
            }),
            outputs: vec![1, 2, 5],
            tol: 1e-4,
        });
    }

    for &(bb, t, c, vv) in &[
        (1u32, 1u32, 1u32, 2u32),
        (2, 5, 7, 13),
        (12, 64, 128, 130),
        (3, 7000, 3, 5), // more positions than one dispatch's loop may run
    ] {
        let s = embedding::Shape { b: bb, t, c, v: vv };
        let (bu, tu, cu, vu) = (bb as usize, t as usize, c as usize, vv as usize);
        for accumulate in [false, true] {
            v.push(Case {
                op: "embedding fwd+bwd",
                shape: format!(
                    "B={bb} T={t} C={c} V={vv}{}",
                    if accumulate { " dwte+=" } else { "" }
                ),
                bufs: vec![
                    u("idx", bu * tu, Init::Tokens(vv)),
                    f("wte", vu * cu, Init::Normal(1.0)),
                    f("wpe", tu * cu, Init::Normal(1.0)),
                    out("x", bu * tu * cu),
                    f("dx", bu * tu * cu, Init::Normal(1.0)),
                    f(
                        "dwte",
                        vu * cu,
                        if accumulate {
                            Init::Normal(1.0)
                        } else {
                            Init::Fill(3.0)
                        },
                    ),
                    f("dwpe", tu * cu, Init::Fill(3.0)),
                ],
                ops: Box::new(move |b| {
                    vec![
                        Op::EmbeddingFwd {
                            s,
                            idx: b[0],
                            wte: b[1],
                            wpe: b[2],
                            x: b[3],
                        },
                        Op::EmbeddingBwd {
                            s,
                            accumulate,
                            idx: b[0],
                            dx: b[4],
                            dwte: b[5],
                            dwpe: b[6],
                        },
                    ]
                }),
                outputs: vec![3, 5, 6],
                tol: 1e-5,
            });
        }
    }

    for &n in &[1u32, 3, 257, 768 * 128] {
        let nu = n as usize;
        v.push(Case {
            op: "residual add",
            shape: format!("[{n}]"),
            bufs: vec![
                f("a", nu, Init::Normal(1.0)),
                f("b", nu, Init::Normal(1.0)),
                out("out", nu),
                f("acc", nu, Init::Normal(1.0)),
            ],
            ops: Box::new(move |b| {
                vec![
                    Op::Add {
                        n,
                        a: b[0],
                        b: b[1],
                        out: b[2],
                    },
                    Op::AddInPlace {
                        n,
                        acc: b[3],
                        a: b[0],
                    },
                ]
            }),
            outputs: vec![2, 3],
            tol: 1e-7,
        });
    }

    // Global norm over three tensors, clip, then AdamW on each.
    for &(n0, n1, n2, clip) in &[
        (1u32, 3u32, 17u32, 1.0f32),
        (257, 1000, 49152, 1.0),
        (130, 4096, 65, 0.0),
    ] {
        let h = adamw::Hyper {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let groups = adamw::SUMSQ_GROUPS as usize;
        let mut bufs = vec![
            out("partials", 3 * groups),
            out("norm", 2),
            f("step", 4, Init::Zero),
        ];
        for &n in &[n0, n1, n2] {
            let nu = n as usize;
            bufs.push(f("p", nu, Init::Normal(1.0)));
            bufs.push(f("g", nu, Init::Normal(0.5)));
            bufs.push(f("m", nu, Init::Normal(0.1)));
            bufs.push(f("v", nu, Init::Uniform(0.0, 0.1)));
        }
        v.push(Case {
            op: "adamw gradnorm+clip+step",
            shape: format!("[{n0}] [{n1}] [{n2}] clip={clip}"),
            bufs,
            ops: Box::new(move |b| {
                let ns = [n0, n1, n2];
                let mut ops = Vec::new();
                for (i, &n) in ns.iter().enumerate() {
                    ops.push(Op::SumSquares {
                        n,
                        slot: i as u32 * adamw::SUMSQ_GROUPS,
                        g: b[4 + 4 * i],
                        partials: b[0],
                    });
                }
                ops.push(Op::GradNorm {
                    count: 3 * adamw::SUMSQ_GROUPS,
                    clip,
                    partials: b[0],
                    norm: b[1],
                });
                for (i, &n) in ns.iter().enumerate() {
                    ops.push(Op::AdamW {
                        n,
                        h,
                        p: b[3 + 4 * i],
                        g: b[4 + 4 * i],
                        m: b[5 + 4 * i],
                        v: b[6 + 4 * i],
                        norm: b[1],
                        step: b[2],
                    });
                }
                ops
            }),
            outputs: vec![1, 3, 5, 6, 7, 9, 10, 11, 13, 14],
            tol: 1e-5,
        });
    }
    v
}

/// Fills a case's buffers the same way on any backend.
fn setup(be: &mut dyn Backend, case: &Case, seed: u64) -> Result<Vec<Buf>> {
    let mut rng = Rng::new(seed);
    let mut bufs = Vec::new();
    for spec in &case.bufs {
        let b = be.alloc(spec.label, spec.len, spec.dtype)?;
        match (spec.init, spec.dtype) {
            (Init::Tokens(n), _) => {
                let data: Vec<u32> = (0..spec.len)
                    .map(|_| rng.below(n as usize) as u32)
                    .collect();
                be.write_u32(b, &data);
            }
            (Init::NoiseCdf, _) => {
                let mut w: Vec<f64> = (0..spec.len)
                    .map(|_| {
                        let x = rng.uniform();
                        if rng.uniform() < 0.2 {
                            0.0
                        } else {
                            x * x * x
                        }
                    })
                    .collect();
                if w.iter().all(|&x| x == 0.0) {
                    w[0] = 1.0;
                }
                be.write_u32(b, &sampled_loss::cdf(&w));
            }
            (init, _) => {
                let data: Vec<f32> = (0..spec.len)
                    .map(|_| match init {
                        Init::Zero => 0.0,
                        Init::Normal(s) => rng.normal() as f32 * s,
                        Init::Uniform(lo, hi) => lo + (hi - lo) * rng.uniform() as f32,
                        Init::Fill(x) => x,
                        Init::Steps(n) => rng.below(n as usize) as f32,
                        Init::Tokens(_) | Init::NoiseCdf => unreachable!(),
                    })
                    .collect();
                be.write_f32(b, &data);
            }
        }
        bufs.push(b);
    }
    Ok(bufs)
}

/// Step scalars every AdamW case uses: lr 1e-3 at step 3.
fn step_scalars(case: &Case) -> Option<[f32; 4]> {
    case.op.starts_with("adamw").then(|| {
        let t = 3;
        [
            1e-3,
            1.0 - 0.9f32.powi(t),
            (1.0 - 0.99f32.powi(t)).sqrt(),
            0.0,
        ]
    })
}

/// The kernel choices a case runs under on `gpu`: the adapter's own, plus the other row-kernel
/// flavour where it changes the dispatches, so every variant is checked on every adapter.
/// Choices the adapter cannot run (subgroup kernels without 8-wide subgroups) are left out.
fn targets_for(gpu: &GpuBackend, ops: &[Op]) -> Vec<(Target, String)> {
    let own = gpu.target.clone();
    let mut other = own.clone();
    other.cpu_like = !own.cpu_like;
    let entries = |t: &Target| -> Vec<&'static str> {
        ops.iter()
            .flat_map(|o| o.launches(t))
            .map(|l| l.entry)
            .collect()
    };
    let runnable = |t: &Target| {
        ops.iter()
            .flat_map(|o| o.launches(t))
            .all(|l| !crate::kernels::SUBGROUP_SHADERS.contains(&l.shader) || t.subgroup8)
    };
    let mut v = Vec::new();
    if runnable(&own) {
        v.push((own.clone(), String::new()));
    }
    if entries(&other) != entries(&own) && runnable(&other) {
        let tag = if other.cpu_like {
            " [cpu-like]"
        } else {
            " [gpu]"
        };
        v.push((other, tag.to_string()));
    }
    v
}

/// Runs one case on `gpu` (under each of its kernel choices) and on the CPU twins, and
/// compares the outputs: one row per choice.
pub fn run_case(gpu: &mut GpuBackend, case: &Case, seed: u64) -> Result<Vec<Row>> {
    let mut cpu = CpuBackend::new();
    let want = run_on(&mut cpu, case, seed)?;
    let probe: Vec<Op> = (case.ops)(&vec![Buf(0); case.bufs.len()]);
    let saved = gpu.target.clone();
    let mut rows = Vec::new();
    for (t, tag) in targets_for(gpu, &probe) {
        gpu.target = t;
        let got = run_on(gpu, case, seed);
        gpu.target = saved.clone();
        let mut row = compare(case, &got?, &want);
        row.op.push_str(&tag);
        rows.push(row);
    }
    Ok(rows)
}

fn run_on(be: &mut dyn Backend, case: &Case, seed: u64) -> Result<Vec<Vec<f32>>> {
    let bufs = setup(be, case, seed)?;
    if let Some(s) = step_scalars(case) {
        be.write_f32(bufs[2], &s);
    }
    let ops = (case.ops)(&bufs);
    let seq = be.compile(&ops)?;
    be.run(&[seq])?;
    case.outputs.iter().map(|&i| be.read_f32(bufs[i])).collect()
}

fn compare(case: &Case, gpu: &[Vec<f32>], cpu: &[Vec<f32>]) -> Row {
    let (mut max_abs, mut max_rel, mut ok) = (0.0f64, 0.0f64, true);
    for (g, c) in gpu.iter().zip(cpu) {
        let scale = c
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0f64, |a, &b| a.max(b.abs() as f64));
        let mut abs = 0.0f64;
        for (&x, &y) in g.iter().zip(c) {
            let d = if x.is_finite() && y.is_finite() {
                (x as f64 - y as f64).abs()
            } else if x == y {
                0.0
            } else {
                f64::INFINITY
            };
            abs = abs.max(d);
            if (y.abs() as f64) > 1e-3 * scale && y.is_finite() {
                max_rel = max_rel.max(d / y.abs() as f64);
            } else if !d.is_finite() {
                max_rel = f64::INFINITY;
            }
        }
        max_abs = max_abs.max(abs);
        if abs > case.tol * scale.max(1e-30) && abs > 0.0 {
            ok = false;
        }
    }
    Row {
        op: case.op.to_string(),
        shape: case.shape.clone(),
        max_abs_err: max_abs,
        max_rel_err: max_rel,
        tol: case.tol,
        ok,
    }
}

/// All cases, in order.
pub fn run_all(gpu: &mut GpuBackend, seed: u64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for c in cases() {
        rows.extend(run_case(gpu, &c, seed)?);
    }
    Ok(rows)
}
