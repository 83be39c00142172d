//! Every WGSL kernel text we launch parses and validates with naga, and every `.wgsl` file in
//! `shaders/src/kernels/` is launched by at least one variant.

use std::collections::BTreeSet;
use std::path::Path;

use vgt_shaders::{KernelSpec, Variant, all_specs};

#[test]
fn every_kernel_variant_parses_and_validates() {
    for spec in all_specs() {
        let text = spec.wgsl();
        assert!(!text.contains("{{"), "{spec:?}: a `{{ name }}` template slot is left unfilled");
        let module = naga::front::wgsl::parse_str(&text)
            .unwrap_or_else(|e| panic!("{spec:?} ({}): {}", spec.file(), e.emit_to_string(&text)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{spec:?} ({}): {}", spec.file(), e.emit_to_string(&text)));
        assert!(module.entry_points.iter().any(|e| e.name == "main"), "{spec:?}: no `main` entry point");
    }
}

#[test]
fn every_wgsl_file_is_launched() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders/src/kernels");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("shaders/src/kernels")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".wgsl"))
        .collect();
    let used: BTreeSet<String> = all_specs().iter().map(|s| s.file().to_string()).collect();
    assert!(!files.is_empty());
    assert_eq!(files, used, "a .wgsl file without a variant (or a variant without its file)");
}

#[test]
fn a_broken_kernel_is_caught() {
    // The check above can fail: a kernel with a type error does not validate.
    let text = KernelSpec { variant: Variant::SdeStep, rows: 1, transposed_weight: false, bias: false }.wgsl().replace("let one_t = 1.0 - t;", "let one_t = 1u - t;");
    let parsed = naga::front::wgsl::parse_str(&text);
    let valid = parsed.ok().map(|m| {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty()).validate(&m).is_ok()
    });
    assert_ne!(valid, Some(true));
}
