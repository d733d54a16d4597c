// Shared by both matmul shaders (shaders/matmul.wgsl, shaders/matmul_sg.wgsl): the uniform
// with the sizes and the three operand layouts, the bindings, and the epilogue
//   store_c(base, i, j, v):  C[i, j] = alpha * v, or C[i, j] += alpha * v when accumulating,
// for (i, j) inside C only (tiles that overhang the edge compute but never store).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    inner: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    a_bs: u32,
    a_bs2: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    b_bs: u32,
    b_bs2: u32,
    c_off: u32,
    c_rs: u32,
    c_cs: u32,
    c_bs: u32,
    c_bs2: u32,
    accumulate: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Stores alpha * v, or adds it, for elements inside C.
fn store_c(base: u32, i: u32, j: u32, v: f32) {
    if (i < p.m && j < p.n) {
        let idx = base + i * p.c_rs + j * p.c_cs;
        if (p.accumulate != 0u) {
            c[idx] = c[idx] + p.alpha * v;
        } else {
            c[idx] = p.alpha * v;
        }
    }
}
