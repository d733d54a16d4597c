// Batched, strided matrix multiply.
//
//   C[z, i, j] = alpha * sum_k A[z, i, k] * B[z, k, j]              (accumulate = 0)
//   C[z, i, j] = C[z, i, j] + alpha * sum_k A[z, i, k] * B[z, k, j] (accumulate = 1)
//
// for z < batch, i < M, j < N, k < K. Product z = z1 * inner + z2, and every operand is
// placed by its own offset and strides (`off`, row `rs`, column `cs`, batch `bs` for z1 and
// `bs2` for z2):
//   A[z, i, k] = a[a_off + z1 a_bs + z2 a_bs2 + i a_rs + k a_cs]     (likewise B over (k, j))
//   C[z, i, j] = c[c_off + z1 c_bs + z2 c_bs2 + i c_rs + j c_cs]
// so transposes (swap rs and cs), attention heads (z2 = head) and column slices of a
// fused tensor cost nothing extra. Sums run over k in increasing order in f32, then one
// multiply by alpha.
//
// `matmul_tiled`: 64x64 output tile per workgroup, 16x16 invocations each owning a 4x4 block
// (rows ty + 16 r, columns tx + 16 c), K in steps of 16 staged through workgroup memory
// (2 x 16 x 64 floats = 8 KiB). Out-of-range loads read 0, so any M, N, K works.
// `matmul_reg`: 64x32 output tile per workgroup of 8x8 invocations, each owning 8 rows x 4
// columns (columns 8 apart), loading straight from storage with clamped indices (no
// workgroup memory, no barriers): cheaper on CPU-like adapters (lavapipe) where caches do
// what workgroup memory would.
// `matmul_naive`: one invocation per output element; the reference rung of the ladder.
// The subgroup rung is shaders/matmul_sg.wgsl (it needs the subgroup feature).

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [TK][TILE], k-major
var<workgroup> tile_b: array<f32, 1024>; // [TK][TILE]

// Where product z starts in each operand.
fn a_base(z: u32) -> u32 {
    return p.a_off + (z / p.inner) * p.a_bs + (z % p.inner) * p.a_bs2;
}

fn b_base(z: u32) -> u32 {
    return p.b_off + (z / p.inner) * p.b_bs + (z % p.inner) * p.b_bs2;
}

fn c_base(z: u32) -> u32 {
    return p.c_off + (z / p.inner) * p.c_bs + (z % p.inner) * p.c_bs2;
}

fn load_a(base: u32, i: u32, kk: u32) -> f32 {
    if (i < p.m && kk < p.k) {
        return a[base + i * p.a_rs + kk * p.a_cs];
    }
    return 0.0;
}

fn load_b(base: u32, kk: u32, j: u32) -> f32 {
    if (kk < p.k && j < p.n) {
        return b[base + kk * p.b_rs + j * p.b_cs];
    }
    return 0.0;
}

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let ab = a_base(wid.z);
    let bb = b_base(wid.z);
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // 1024 elements of each tile, 4 per invocation.
        for (var l = 0u; l < 4u; l++) {
            let e = li + l * 256u;
            // A tile: consecutive invocations walk k, then rows.
            let ar = e / TK;
            let ak = e % TK;
            tile_a[ak * TILE + ar] = load_a(ab, row0 + ar, k0 + ak);
            // B tile: consecutive invocations walk columns.
            let bk = e / TILE;
            let bc = e % TILE;
            tile_b[bk * TILE + bc] = load_b(bb, k0 + bk, col0 + bc);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av = vec4<f32>(
                tile_a[kk * TILE + lid.y],
                tile_a[kk * TILE + lid.y + 16u],
                tile_a[kk * TILE + lid.y + 32u],
                tile_a[kk * TILE + lid.y + 48u],
            );
            let bv = vec4<f32>(
                tile_b[kk * TILE + lid.x],
                tile_b[kk * TILE + lid.x + 16u],
                tile_b[kk * TILE + lid.x + 32u],
                tile_b[kk * TILE + lid.x + 48u],
            );
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    let cb = c_base(wid.z);
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + lid.y + 16u * r;
        let v = acc[r];
        store_c(cb, i, col0 + lid.x, v.x);
        store_c(cb, i, col0 + lid.x + 16u, v.y);
        store_c(cb, i, col0 + lid.x + 32u, v.z);
        store_c(cb, i, col0 + lid.x + 48u, v.w);
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y;
    let j = gid.x;
    if (i >= p.m || j >= p.n) {
        return;
    }
    let ab = a_base(gid.z);
    let bb = b_base(gid.z);
    var s = 0.0;
    for (var kk = 0u; kk < p.k; kk++) {
        s += load_a(ab, i, kk) * load_b(bb, kk, j);
    }
    store_c(c_base(gid.z), i, j, s);
}

@compute @workgroup_size(8, 8, 1)
fn matmul_reg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i0 = wid.y * 64u + lid.y * 8u;
    // Columns interleave across invocations (j0 + 8c) so neighbouring lanes read neighbouring
    // B elements.
    let j0 = wid.x * 32u + lid.x;
    // Clamp so every load is in range; rows/columns past the edge are computed but not stored.
    var ar: array<u32, 8>;
    var bc: vec4<u32>;
    for (var r = 0u; r < 8u; r++) {
        ar[r] = a_base(wid.z) + min(i0 + r, p.m - 1u) * p.a_rs;
    }
    for (var c = 0u; c < 4u; c++) {
        bc[c] = b_base(wid.z) + min(j0 + 8u * c, p.n - 1u) * p.b_cs;
    }
    var acc: array<vec4<f32>, 8>;
    for (var r = 0u; r < 8u; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var kk = 0u; kk < p.k; kk++) {
        let ak = kk * p.a_cs;
        let bk = kk * p.b_rs;
        let bv = vec4<f32>(b[bc.x + bk], b[bc.y + bk], b[bc.z + bk], b[bc.w + bk]);
        for (var r = 0u; r < 8u; r++) {
            acc[r] += a[ar[r] + ak] * bv;
        }
    }
    let cb = c_base(wid.z);
    for (var r = 0u; r < 8u; r++) {
        let v = acc[r];
        store_c(cb, i0 + r, j0, v.x);
        store_c(cb, i0 + r, j0 + 8u, v.y);
        store_c(cb, i0 + r, j0 + 16u, v.z);
        store_c(cb, i0 + r, j0 + 24u, v.w);
    }
}
