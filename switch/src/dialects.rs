//! The dialects an instance knows: the built-in ones and any loaded from files.

use std::collections::HashMap;
use std::path::PathBuf;

use codec::Dialect;

/// A dialect file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DialectLoadError {
    #[error("dialect file {path}: {why}")]
    File { path: PathBuf, why: String },
}

/// Built-in dialects plus those in `files` (TOML, or JSON by extension).
pub(crate) fn load(
    files: &[PathBuf],
) -> Result<HashMap<String, &'static Dialect>, DialectLoadError> {
    let mut all: HashMap<String, &'static Dialect> = codec::builtin::names()
        .filter_map(|n| codec::builtin::get(n).map(|d| (n.to_string(), d)))
        .collect();
    for path in files {
        let err = |why: String| DialectLoadError::File {
            path: path.clone(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let d = if path.extension().is_some_and(|e| e == "json") {
            Dialect::from_json(&text)
        } else {
            Dialect::from_toml(&text)
        }
        .map_err(|e| err(e.to_string()))?;
        if all.contains_key(&d.name) {
            return Err(err(format!("dialect {} is already defined", d.name)));
        }
        all.insert(d.name.clone(), codec::spec::leak(d));
    }
    Ok(all)
}
