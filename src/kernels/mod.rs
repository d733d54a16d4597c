//! The kernel library. An op has three faces found by one name: `shaders/<op>.wgsl` (headed
//! by its math), and in `src/kernels/<op>.rs` its argument structs with how they launch on the
//! GPU ([`Kernel::launches`]), its plain-Rust CPU twin ([`Kernel::cpu`]) and its check cases.
//! [`OPS`] lists them, one line per op.
//!
//! To add an op: write `shaders/<op>.wgsl` with its math in the header and a `Params`
//! uniform; in `<op>.rs` declare the same `Params` with [`uniform!`] (a test compares the two
//! layouts), a struct per entry point implementing [`Kernel`], and `cases()`; add the line to
//! [`OPS`]. Shared WGSL helpers live in `shaders/lib/` and are prepended ([`Shader::prelude`]).
//!
//! Conventions every shader follows: binding 0 is the `Params` uniform, storage buffers are
//! bound by their WGSL names; row kernels run one workgroup per row and element kernels 256
//! invocations per workgroup, both on a 2-D grid so large tensors stay under the
//! 65535-workgroups-per-dimension limit. Kernels stay within WebGPU's default limits.

use std::fmt;

use crate::buffers::{Buf, HostMem};

/// Declares a shader's `Params` uniform: a `#[repr(C)]` struct of 32-bit fields, plus its
/// field list, which `tests/shaders.rs` compares with the WGSL struct of the same name.
macro_rules! uniform {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl $crate::kernels::Uniform for $name {
            fn fields() -> Vec<$crate::kernels::Field> {
                vec![$($crate::kernels::Field {
                    name: stringify!($f),
                    offset: std::mem::offset_of!($name, $f),
                    size: std::mem::size_of::<$t>(),
                }),*]
            }
        }
    };
}

/// `shaders/<name>.wgsl` with its `Params` uniform and the shared helpers it needs.
macro_rules! shader {
    ($name:literal, $params:ty $(, $lib:expr)*) => {
        $crate::kernels::Shader {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            prelude: &[$($lib),*],
            subgroup8: false,
            params: <$params as $crate::kernels::Uniform>::fields,
        }
    };
}

pub mod adamw;
pub mod agg;
pub mod attention;
pub mod case;
pub mod cosreg;
pub mod cross_entropy;
pub mod cwt;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod row_norms;
pub mod sampled_loss;
pub mod softmax;
pub mod threshold;

/// Every op: its name, its shaders and its check cases.
#[rustfmt::skip]
pub const OPS: &[OpEntry] = &[
    OpEntry { name: "matmul", shaders: &[&matmul::SHADER, &matmul::SHADER_SG], cases: matmul::cases },
    OpEntry { name: "softmax", shaders: &[&softmax::SHADER], cases: softmax::cases },
    OpEntry { name: "threshold", shaders: &[&threshold::SHADER], cases: threshold::cases },
    OpEntry { name: "cross_entropy", shaders: &[&cross_entropy::SHADER], cases: cross_entropy::cases },
    OpEntry { name: "sampled_loss", shaders: &[&sampled_loss::SHADER], cases: sampled_loss::cases },
    OpEntry { name: "row_norms", shaders: &[&row_norms::SHADER], cases: row_norms::cases },
    OpEntry { name: "cosreg", shaders: &[&cosreg::SHADER], cases: cosreg::cases },
    OpEntry { name: "cwt", shaders: &[&cwt::SHADER], cases: cwt::cases },
    OpEntry { name: "agg", shaders: &[&agg::SHADER], cases: agg::cases },
    OpEntry { name: "layernorm", shaders: &[&layernorm::SHADER], cases: layernorm::cases },
    OpEntry { name: "gelu", shaders: &[&gelu::SHADER], cases: gelu::cases },
    OpEntry { name: "attention", shaders: &[&attention::SHADER], cases: attention::cases },
    OpEntry { name: "embedding", shaders: &[&embedding::SHADER], cases: embedding::cases },
    OpEntry { name: "residual", shaders: &[&residual::SHADER], cases: residual::cases },
    OpEntry { name: "adamw", shaders: &[&adamw::SHADER], cases: adamw::cases },
];

/// One line of [`OPS`].
pub struct OpEntry {
    pub name: &'static str,
    pub shaders: &'static [&'static Shader],
    /// `selfish check`'s cases for this op: GPU against the CPU twin.
    pub cases: fn() -> Vec<case::Case>,
}

/// Every shader of every op.
pub fn shaders() -> impl Iterator<Item = &'static Shader> {
    OPS.iter().flat_map(|o| o.shaders.iter().copied())
}

/// Every check case of every op, in [`OPS`] order.
pub fn cases() -> Vec<case::Case> {
    OPS.iter().flat_map(|o| (o.cases)()).collect()
}

/// Shared WGSL, prepended to the shaders that list it.
pub struct Lib {
    pub name: &'static str,
    pub source: &'static str,
}

/// Fixed-order workgroup tree reductions (`reduce_sum`, `reduce_max`) over `WG` lanes.
pub const REDUCE: Lib = Lib {
    name: "lib/reduce",
    source: include_str!("../../shaders/lib/reduce.wgsl"),
};

/// The matmul shaders' uniform, bindings and epilogue.
pub const MATMUL: Lib = Lib {
    name: "lib/matmul",
    source: include_str!("../../shaders/lib/matmul.wgsl"),
};

/// Every shared WGSL file.
pub const LIBS: &[&Lib] = &[&REDUCE, &MATMUL];

/// A WGSL file and what compiling it needs.
pub struct Shader {
    /// `shaders/<name>.wgsl`
    pub name: &'static str,
    pub source: &'static str,
    /// Helpers prepended before compiling.
    pub prelude: &'static [&'static Lib],
    /// Needs 8-wide subgroups; picked only where the adapter has them.
    pub subgroup8: bool,
    /// The host's layout of the shader's `Params` uniform.
    pub params: fn() -> Vec<Field>,
}

impl Shader {
    /// What the device compiles: the prelude, then the file.
    pub fn full_source(&self) -> String {
        let mut s = String::new();
        for lib in self.prelude {
            s.push_str(lib.source);
            s.push('\n');
        }
        s.push_str(self.source);
        s
    }

    /// The full source as naga parses it.
    pub fn parse(&self) -> Result<naga::Module, String> {
        naga::front::wgsl::parse_str(&self.full_source())
            .map_err(|e| e.emit_to_string(&self.full_source()))
    }

    /// Where each named storage buffer is bound (binding 0, the uniform, is `p`).
    pub fn bindings(&self) -> Result<std::collections::HashMap<String, u32>, String> {
        let m = self.parse()?;
        Ok(m.global_variables
            .iter()
            .filter_map(|(_, g)| Some((g.name.clone()?, g.binding.as_ref()?.binding)))
            .collect())
    }

    /// The WGSL `Params` struct's members as `(name, byte offset)`.
    pub fn wgsl_params(&self) -> Result<Vec<(String, u32)>, String> {
        let m = self.parse()?;
        for (_, ty) in m.types.iter() {
            if let (Some("Params"), naga::TypeInner::Struct { members, .. }) =
                (ty.name.as_deref(), &ty.inner)
            {
                return Ok(members
                    .iter()
                    .map(|mb| (mb.name.clone().unwrap_or_default(), mb.offset))
                    .collect());
            }
        }
        Err(format!("shaders/{}.wgsl has no struct Params", self.name))
    }
}

/// One field of a uniform as the host writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// A shader's uniform, declared with [`uniform!`].
pub trait Uniform: bytemuck::Pod {
    fn fields() -> Vec<Field>;
}

/// One dispatch: which entry point, its uniform, its storage buffers by WGSL name, its grid.
#[derive(Clone, Debug)]
pub struct Launch {
    pub shader: &'static Shader,
    pub entry: &'static str,
    /// The uniform's 32-bit words.
    pub params: Vec<u32>,
    pub bufs: Vec<(&'static str, Buf)>,
    pub groups: [u32; 3],
}

impl fmt::Debug for Shader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shaders/{}.wgsl", self.name)
    }
}

impl Launch {
    pub fn new<P: Uniform>(
        shader: &'static Shader,
        entry: &'static str,
        params: &P,
        groups: [u32; 3],
    ) -> Launch {
        Launch {
            shader,
            entry,
            params: bytemuck::cast_slice(bytemuck::bytes_of(params)).to_vec(),
            bufs: Vec::new(),
            groups,
        }
    }

    /// Binds `buf` to the WGSL storage variable `name`.
    pub fn bind(mut self, name: &'static str, buf: Buf) -> Launch {
        self.bufs.push((name, buf));
        self
    }
}

/// An op on named buffers: how it dispatches on a GPU and what its CPU twin computes. Both
/// faces have the same contract; the check cases compare them.
pub trait Kernel: fmt::Debug {
    /// The dispatches on an adapter described by `t`.
    fn launches(&self, t: &Target) -> Vec<Launch>;
    /// The CPU twin, on host memory.
    fn cpu(&self, mem: &mut HostMem);
    /// The matmul products this op runs on `t` (what `selfish tune` times).
    fn products(&self, _t: &Target) -> Vec<matmul::Shape> {
        Vec::new()
    }
}

/// A kernel invocation, as op lists hold it.
pub type Op = Box<dyn Kernel>;

/// `.op()` on any kernel struct.
pub trait IntoOp {
    fn op(self) -> Op;
}

impl<K: Kernel + 'static> IntoOp for K {
    fn op(self) -> Op {
        Box::new(self)
    }
}

/// The most iterations a kernel's loops run in one invocation. lavapipe (Mesa's llvmpipe)
/// silently ends any shader loop after 65535 iterations, so longer reductions are split
/// across dispatches, or take a kernel whose loops stay short.
pub const LOOP_LIMIT: u32 = 16384;

/// Largest workgroup count per grid dimension that WebGPU guarantees.
pub const MAX_GROUPS: u32 = 65535;

/// A 2-D grid of `n` workgroups; shaders recover the index as `wid.x + wid.y * nwg.x`.
pub fn grid(n: u32) -> [u32; 3] {
    let n = n.max(1);
    let x = n.min(MAX_GROUPS);
    [x, n.div_ceil(x), 1]
}

/// Grid for an element-wise kernel with 256 invocations per workgroup.
pub fn elem_grid(n: u32) -> [u32; 3] {
    grid(n.div_ceil(256))
}

/// What kernel choice depends on. Every choice computes the same contract; they differ in
/// speed, so the caller sets this from the adapter and checks run every choice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Target {
    /// A CPU-like adapter (lavapipe, llvmpipe, WARP, SwiftShader), where a workgroup barrier
    /// costs microseconds and every non-uniform load is a per-lane gather: prefer kernels that
    /// give one invocation a whole row and never synchronise.
    pub cpu_like: bool,
    /// Subgroup operations are on and subgroups are exactly 8 lanes (for `matmul_sg`).
    pub subgroup8: bool,
    /// Matmul variant per shape, measured by `selfish tune`; see [`matmul::Shape::key`].
    pub tuned: std::collections::BTreeMap<String, &'static str>,
}

impl Target {
    /// Whether to take a CPU-like kernel whose invocation loops `len` times; past
    /// [`LOOP_LIMIT`] the workgroup kernel, whose loops are shorter, is taken instead.
    pub fn cpu_loop(&self, len: u32) -> bool {
        self.cpu_like && len <= LOOP_LIMIT
    }

    /// The matmul variant for one shape.
    pub fn matmul_variant(&self, s: &matmul::Shape) -> &'static str {
        if let Some(v) = self.tuned.get(&s.key()) {
            return v;
        }
        matmul::default_variant(self, s)
    }

    /// Whether an adapter described by `self` can run every dispatch of `launches`.
    pub fn runs(&self, launches: &[Launch]) -> bool {
        launches
            .iter()
            .all(|l| !l.shader.subgroup8 || self.subgroup8)
    }
}
