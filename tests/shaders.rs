//! Every WGSL file parses, validates, and translates to SPIR-V (Vulkan), MSL (Metal), HLSL
//! (DX12) and GLSL ES 3.1 (GL). Metal and DX12 cannot run here, so translation is their
//! stand-in; Vulkan and GL also run for real in the kernel tests.

use std::path::Path;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use selfish::kernels;

/// `(name, source)` of every `.wgsl` file under `shaders/` (`lib/reduce` for shared ones).
fn files_on_disk() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut out = Vec::new();
    for (dir, prefix) in [(root.clone(), ""), (root.join("lib"), "lib/")] {
        for e in std::fs::read_dir(&dir).expect("shaders/ exists").flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "wgsl") {
                let stem = p.file_stem().unwrap().to_string_lossy();
                out.push((
                    format!("{prefix}{stem}"),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Every registered shader as the device compiles it (prelude included).
fn shader_files() -> Vec<(String, String)> {
    kernels::shaders()
        .map(|s| (s.name.to_string(), s.full_source()))
        .collect()
}

#[test]
fn registry_matches_shader_folder() {
    let mut registered: Vec<(String, String)> = kernels::shaders()
        .map(|s| (s.name.to_string(), s.source.to_string()))
        .chain(
            kernels::LIBS
                .iter()
                .map(|l| (l.name.to_string(), l.source.to_string())),
        )
        .collect();
    registered.sort();
    let names = |v: &[(String, String)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&files_on_disk()),
        names(&registered),
        "kernels::OPS and kernels::LIBS must list every shaders/**/*.wgsl"
    );
    for ((name, disk), (_, embedded)) in files_on_disk().iter().zip(&registered) {
        assert_eq!(disk, embedded, "{name}.wgsl differs from the embedded copy");
    }
}

#[test]
fn every_shader_states_its_math() {
    for (name, src) in files_on_disk() {
        let header: Vec<&str> = src.lines().take_while(|l| l.starts_with("//")).collect();
        assert!(
            header.len() >= 3,
            "shaders/{name}.wgsl must open with a comment block stating the math it computes"
        );
    }
}

/// The host writes each uniform through a `#[repr(C)]` struct; its fields must sit exactly
/// where the WGSL `Params` struct reads them, name for name.
#[test]
fn uniform_structs_match_wgsl_params() {
    for s in kernels::shaders() {
        let wgsl = s.wgsl_params().unwrap_or_else(|e| panic!("{e}"));
        let host: Vec<(String, u32)> = (s.params)()
            .into_iter()
            .map(|f| (f.name.to_string(), f.offset as u32))
            .collect();
        assert_eq!(
            host, wgsl,
            "shaders/{}.wgsl Params vs its Rust struct",
            s.name
        );
        assert!(
            (s.params)().iter().all(|f| f.size == 4),
            "{}: 32-bit fields only",
            s.name
        );
    }
}

/// Every buffer a kernel binds by name is declared by its shader.
#[test]
fn every_launch_binds_declared_buffers() {
    let targets = [
        kernels::Target::default(),
        kernels::Target {
            cpu_like: true,
            subgroup8: true,
            ..Default::default()
        },
    ];
    for case in kernels::cases() {
        for t in &targets {
            for op in case.probe() {
                for l in op.launches(t) {
                    let declared = l.shader.bindings().unwrap();
                    for (name, _) in &l.bufs {
                        assert!(
                            declared.contains_key(*name),
                            "{}::{} binds '{name}', not declared in the shader",
                            l.shader.name,
                            l.entry
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_shader_validates_and_translates() {
    for (name, src) in shader_files() {
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}.wgsl: {}", e.emit_to_string(&src)));
        // Subgroup kernels are only picked on adapters with the subgroup feature; the rest
        // must validate with no optional capability at all.
        let subgroups = kernels::shaders().any(|s| s.name == name && s.subgroup8);
        let caps = if subgroups {
            Capabilities::SUBGROUP
        } else {
            Capabilities::empty()
        };
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}.wgsl invalid: {e:?}"));

        spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{name}.wgsl -> SPIR-V: {e}"));

        let entries: Vec<String> = module.entry_points.iter().map(|e| e.name.clone()).collect();
        assert!(!entries.is_empty(), "{name}.wgsl has no entry point");
        for ep in module.entry_points.iter() {
            assert_eq!(
                ep.stage,
                naga::ShaderStage::Compute,
                "{name}::{} is not a compute entry point",
                ep.name
            );
            let wg = ep.workgroup_size;
            assert!(
                wg.iter().product::<u32>() <= 256,
                "{name}::{} uses {wg:?} invocations: WebGPU guarantees 256",
                ep.name
            );
        }

        let msl_pipeline = msl::PipelineOptions::default();
        msl::write_string(&module, &info, &msl::Options::default(), &msl_pipeline)
            .unwrap_or_else(|e| panic!("{name}.wgsl -> MSL: {e}"));

        let mut hlsl_out = String::new();
        let hlsl_opts = hlsl::Options::default();
        let hlsl_pipeline = hlsl::PipelineOptions::default();
        hlsl::Writer::new(&mut hlsl_out, &hlsl_opts, &hlsl_pipeline)
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{name}.wgsl -> HLSL: {e}"));

        for ep in &entries {
            let mut glsl_out = String::new();
            let opts = glsl::Options {
                version: glsl::Version::Embedded {
                    version: 310,
                    is_webgl: false,
                },
                ..Default::default()
            };
            let pipeline = glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: ep.clone(),
                multiview: None,
            };
            glsl::Writer::new(
                &mut glsl_out,
                &module,
                &info,
                &opts,
                &pipeline,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write())
            .unwrap_or_else(|e| panic!("{name}::{ep} -> GLSL: {e}"));
        }
    }
}

/// Workgroup memory per entry point stays within WebGPU's default 16 KiB.
#[test]
fn workgroup_storage_within_default_limit() {
    for (name, src) in shader_files() {
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let total: u32 = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
            .map(|(_, g)| layouter[g.ty].size)
            .sum();
        assert!(
            total <= 16384,
            "{name}.wgsl declares {total} bytes of workgroup memory (limit 16384)"
        );
    }
}
