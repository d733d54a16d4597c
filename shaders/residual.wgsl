// Residual connections, element-wise over n f32 values (element kernels, 256 per workgroup).
//
// add:          out[i] = a[i] + b[i]      for i < n   (a, b, out: [n])
// add_in_place: acc[i] = acc[i] + a[i]    for i < n   (gradient accumulation into acc)

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> acc: array<f32>;

@compute @workgroup_size(256)
fn add(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if i < p.n {
        out[i] = a[i] + b[i];
    }
}

@compute @workgroup_size(256)
fn add_in_place(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if i < p.n {
        acc[i] = acc[i] + a[i];
    }
}
