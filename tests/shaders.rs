//! Every WGSL file parses, validates, and translates to SPIR-V (Vulkan), MSL (Metal), HLSL
//! (DX12) and GLSL ES 3.1 (GL). Metal and DX12 cannot run here, so translation is their
//! stand-in; Vulkan and GL also run for real in the kernel tests.

use std::path::Path;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shader_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn registry_matches_shader_folder() {
    let on_disk: Vec<String> = shader_files().into_iter().map(|(n, _)| n).collect();
    let mut registered: Vec<String> = selfish::kernels::SHADERS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    registered.sort();
    assert_eq!(
        on_disk, registered,
        "kernels::SHADERS must list every shaders/*.wgsl"
    );
    for (name, src) in shader_files() {
        let registered_src = selfish::kernels::SHADERS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1;
        assert_eq!(
            src, registered_src,
            "{name}.wgsl differs from the embedded copy"
        );
    }
}

#[test]
fn every_shader_states_its_math() {
    for (name, src) in shader_files() {
        let header: Vec<&str> = src.lines().take_while(|l| l.starts_with("//")).collect();
        assert!(
            header.len() >= 3,
            "shaders/{name}.wgsl must open with a comment block stating the math it computes"
        );
    }
}

#[test]
fn every_shader_validates_and_translates() {
    for (name, src) in shader_files() {
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}.wgsl: {}", e.emit_to_string(&src)));
        // Subgroup kernels are only picked on adapters with the subgroup feature; the rest
        // must validate with no optional capability at all.
        let caps = if selfish::kernels::SUBGROUP_SHADERS.contains(&name.as_str()) {
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
