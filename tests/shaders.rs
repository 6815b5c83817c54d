//! Every WGSL file under shaders/ parses and validates with naga (no GPU needed).

use std::path::Path;

fn validate(name: &str, source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("{name}: parse: {}", e.emit_to_string(source)))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| format!("{name}: validate: {e:?}"))?;
    Ok(())
}

#[test]
fn every_wgsl_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut count = 0;
    let mut errors = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read shader");
        if source.contains("Not a module on its own") {
            continue; // a part: validated as the module it is compiled in, below
        }
        count += 1;
        if let Err(e) = validate(&path.display().to_string(), &source) {
            errors.push(e);
        }
    }
    assert!(count > 0, "no .wgsl files found in {}", dir.display());
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn every_embedded_shader_is_a_file_in_shaders_dir() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for (name, source) in wgrad::shader_sources() {
        let on_disk = std::fs::read_to_string(dir.join(name)).expect("embedded shader has a file");
        assert_eq!(on_disk, source, "{name} differs from the embedded copy");
        validate(name, source).unwrap();
    }
}

#[test]
fn every_shader_part_validates_in_its_composed_module() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let composed = wgrad::composed_shader_sources();
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.expect("dir entry").path();
        let source = std::fs::read_to_string(&path).expect("read shader");
        if !source.contains("Not a module on its own") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let (_, module) = composed
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name}: a part no composed module uses"));
        assert!(
            module.contains(&source),
            "{name}: the composed module has another copy"
        );
        validate(&format!("{name} (composed)"), module).unwrap();
    }
}
