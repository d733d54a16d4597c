// Shared workgroup reductions, prepended to the shaders that list this file.
//
// reduce_sum(li, v) = sum over the WG lanes of v,   reduce_max(li, v) = max over the lanes.
// A fixed tree: lane li adds lane li + s for s = WG/2, WG/4, ..., 1, so the result is the same
// bits on every run and every adapter. WG (a power of two, the workgroup size) is the
// including shader's constant; call from uniform control flow. Every lane gets the result.

var<workgroup> red: array<f32, WG>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier(); // every lane has read red[0] before it is reused
    return r;
}

fn reduce_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
