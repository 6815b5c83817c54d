//! Saving and loading a compiled model's parameters (and state) by name as safetensors.
//! Files may hold F32, F16, BF16 (or F64) values: loading widens them to the model's f32.

use std::path::Path;

use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::io::SaveOptions;

/// Saves the named parameters (and state, see [`Module::saved_names`]) of a compiled
/// model as safetensors (f32 as `F32`).
pub fn save_params(exe: &Executor, names: &[String], path: impl AsRef<Path>) -> Result<()> {
    save_params_with(exe, names, path, SaveOptions::default())
}

/// [`save_params`], storing the values as `options` asks: `SaveOptions::half(HalfFormat::BF16)`
/// (or `F16`) writes a half-size checkpoint, rounded to nearest even.
pub fn save_params_with(
    exe: &Executor,
    names: &[String],
    path: impl AsRef<Path>,
    options: SaveOptions,
) -> Result<()> {
    let values: Vec<(&str, crate::Tensor)> = names
        .iter()
        .map(|n| Ok((n.as_str(), exe.param(n)?)))
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &crate::Tensor)> = values.iter().map(|(n, t)| (*n, t)).collect();
    crate::io::save_safetensors_with(path, &refs, options)
}

/// Loads parameters (and state) by name from a safetensors file into a compiled model; every
/// name in `names` must be present with the right shape. `F16` and `BF16` values are widened
/// to f32 (exactly).
pub fn load_params(exe: &Executor, names: &[String], path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let loaded = crate::io::load_safetensors(path, exe.device())?;
    for name in names {
        let (_, value) = loaded
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::Invalid {
                op: "load_params",
                detail: format!("{}: no tensor named {name:?}", path.display()),
            })?;
        exe.set_param(name, value)?;
    }
    Ok(())
}
