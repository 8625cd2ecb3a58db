//! What `plugin install` and `plugin upgrade` send: a plugin's manifest and module, read from
//! the owner's disk before the hub is asked anything, and the `--set` config overrides.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use machinomy_core::plugin::{ManifestError, valid_plugin_name};
use machinomy_hub::client::ClientError;
use machinomy_hub::plugin::{MAX_MANIFEST, MAX_WASM};
use machinomy_web::model::{NewPlugin, PluginUpgrade};

/// The manifest's name in a plugin directory.
pub(crate) const MANIFEST_FILE: &str = "plugin.toml";

/// A plugin as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalPlugin {
    /// The manifest's `name`.
    pub(crate) name: String,
    /// Where the manifest was read, to name it in the hub's answers about it.
    pub(crate) manifest_path: PathBuf,
    pub(crate) manifest: String,
    pub(crate) wasm: Vec<u8>,
}

impl LocalPlugin {
    /// Reads a plugin from `path` (a directory holding `plugin.toml`, or a `plugin.toml`) and
    /// its module: `wasm` if given, else the file the manifest's `wasm` names (by default
    /// `<name>.wasm`) next to the manifest.
    pub(crate) fn read(path: &Path, wasm: Option<&Path>) -> Result<LocalPlugin> {
        let manifest_path = if path.is_dir() { path.join(MANIFEST_FILE) } else { path.to_owned() };
        let missing_manifest = if path.is_dir() {
            format!("{} has no {MANIFEST_FILE}: is it a plugin's directory?", path.display())
        } else {
            format!("{}: no such file or directory (give a plugin's directory or its {MANIFEST_FILE})", path.display())
        };
        let manifest = read_limited(&manifest_path, MAX_MANIFEST, missing_manifest)?;
        let manifest = String::from_utf8(manifest)
            .map_err(|_| anyhow!("{}: is not UTF-8 text, so not a {MANIFEST_FILE}", manifest_path.display()))?;
        let (name, wasm_file) = manifest_keys(&manifest).map_err(|e| anyhow!("{}: {e}", manifest_path.display()))?;
        let (wasm_path, missing_wasm) = match wasm {
            Some(wasm) => (wasm.to_owned(), format!("--wasm {}: no such file or directory", wasm.display())),
            None => {
                let dir = manifest_path.parent().map_or_else(PathBuf::new, Path::to_owned);
                let wasm_path = dir.join(&wasm_file);
                // Cargo names a crate's module with '_' for '-': the likeliest reason it is not there.
                let cargo_name = wasm_file.replace('-', "_");
                let missing = if cargo_name != wasm_file && dir.join(&cargo_name).is_file() {
                    format!(
                        "{}: no such file, but {cargo_name} is there: cargo names the module with underscores; \
                         rename it to {wasm_file}, or set `wasm = \"{cargo_name}\"` in {MANIFEST_FILE}",
                        wasm_path.display()
                    )
                } else {
                    format!(
                        "{}: no such file (the module {MANIFEST_FILE} names): build the plugin first, or give its module with --wasm FILE",
                        wasm_path.display()
                    )
                };
                (wasm_path, missing)
            }
        };
        let wasm = read_limited(&wasm_path, MAX_WASM, missing_wasm)?;
        Ok(LocalPlugin { name, manifest_path, manifest, wasm })
    }

    /// The hub's answer about this plugin, its manifest named by where it was read (as the
    /// CLI's own messages about it do) rather than as a bare `plugin.toml`.
    pub(crate) fn locate(&self, error: ClientError) -> ClientError {
        match error {
            ClientError::Api(message) => match message.strip_prefix("plugin.toml: ") {
                Some(rest) => ClientError::Api(format!("{}: {rest}", self.manifest_path.display())),
                None => ClientError::Api(message),
            },
            other => other,
        }
    }

    /// The body of `POST /api/v1/plugins`.
    pub(crate) fn install_body(&self, config: serde_json::Map<String, serde_json::Value>) -> NewPlugin {
        NewPlugin { manifest: self.manifest.clone(), wasm: self.wasm_base64(), config }
    }

    /// The body of `PUT /api/v1/plugins/{name}`.
    pub(crate) fn upgrade_body(&self, config: serde_json::Map<String, serde_json::Value>) -> PluginUpgrade {
        PluginUpgrade { manifest: self.manifest.clone(), wasm: self.wasm_base64(), config }
    }

    fn wasm_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.wasm)
    }
}

/// A file of at most `limit` bytes; `missing` is the whole message when it does not exist.
fn read_limited(path: &Path, limit: usize, missing: String) -> Result<Vec<u8>> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(missing),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    if metadata.is_dir() {
        bail!("{} is a directory, not a file", path.display());
    }
    if metadata.len() > limit as u64 {
        bail!("{} is {} bytes; the hub accepts at most {limit}", path.display(), metadata.len());
    }
    std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
}

/// The manifest's `name` and module file name (its `wasm`, or `<name>.wasm`), read without
/// judging the rest: the hub checks the manifest whole.
pub(crate) fn manifest_keys(text: &str) -> Result<(String, String), String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let name = match table.get("name") {
        Some(toml::Value::String(name)) => name.clone(),
        Some(_) => return Err("`name` must be a string".to_owned()),
        None => return Err("`name` is missing".to_owned()),
    };
    if !valid_plugin_name(&name) {
        return Err(ManifestError::BadName(name).to_string());
    }
    let wasm = match table.get("wasm") {
        None => format!("{name}.wasm"),
        Some(toml::Value::String(file)) => file.clone(),
        Some(_) => return Err("`wasm` must be a file name".to_owned()),
    };
    Ok((name, wasm))
}

/// A TOML error on one line, with where it is.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let line = error.span().and_then(|span| text.get(..span.start)).map(|before| before.matches('\n').count() + 1);
    match line {
        Some(line) => format!("not valid TOML (line {line}): {}", error.message().trim()),
        None => format!("not valid TOML: {}", error.message().trim()),
    }
}

/// `--set KEY=VALUE`, read as the web UI reads a settings line.
pub(crate) fn parse_set(text: &str) -> Result<(String, serde_json::Value), String> {
    machinomy_web::model::parse_setting(text).map_err(|e| format!("--set {}: {e}", crate::output::quoted(text)))
}

/// Every `--set`, later ones winning.
pub(crate) fn overrides(sets: &[String]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut config = serde_json::Map::new();
    for text in sets {
        let (key, value) = parse_set(text)?;
        if config.insert(key.clone(), value).is_some() {
            return Err(format!("--set {key} is given twice"));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_values_are_json_when_they_parse_and_text_otherwise() {
        let cases = [
            ("every_secs=600", json!(600)),
            ("rain_threshold=-5", json!(-5)),
            ("ratio=0.5", json!(0.5)),
            ("on=true", json!(true)),
            ("none=null", json!(null)),
            (r#"grocer="abc""#, json!("abc")),
            ("grocer=abc", json!("abc")),
            ("city=New York", json!("New York")),
            ("empty=", json!("")),
            ("url=a=b", json!("a=b")),
            (r#"diet={"milk": 2}"#, json!({"milk": 2})),
            ("list=[1, 2]", json!([1, 2])),
            ("broken={milk", json!("{milk")),
            // Numbers JSON would change stay as typed.
            ("meter=1e3", json!("1e3")),
            ("big=99999999999999999999999", json!("99999999999999999999999")),
            ("max=18446744073709551615", json!(18_446_744_073_709_551_615_u64)),
        ];
        for (text, value) in cases {
            let (key, parsed) = parse_set(text).unwrap();
            assert_eq!(parsed, value, "{text}");
            assert_eq!(Some(key.as_str()), text.split('=').next());
        }
        assert_eq!(parse_set("novalue").unwrap_err(), r#"--set "novalue": expected KEY=VALUE"#);
        assert_eq!(parse_set("=5").unwrap_err(), r#"--set "=5": the key is empty"#);
        let all = overrides(&["a=1".to_owned(), "b=x".to_owned()]).unwrap();
        assert_eq!(serde_json::Value::Object(all), json!({"a": 1, "b": "x"}));
        let twice = overrides(&["a=1".to_owned(), "b=x".to_owned(), "a=2".to_owned()]).unwrap_err();
        assert_eq!(twice, "--set a is given twice");
    }

    #[test]
    fn the_manifest_gives_the_name_and_the_module_file() {
        assert_eq!(
            manifest_keys("name = \"weather\"\nversion = \"1\"\n").unwrap(),
            ("weather".into(), "weather.wasm".into())
        );
        let named = "name = \"weather\"\nwasm = \"w.wasm\"\n[grants]\npay = true\n";
        assert_eq!(manifest_keys(named).unwrap(), ("weather".into(), "w.wasm".into()));
        assert_eq!(manifest_keys("version = \"1\"").unwrap_err(), "`name` is missing");
        assert_eq!(manifest_keys("name = 5").unwrap_err(), "`name` must be a string");
        assert!(manifest_keys("name = \"Bad Name\"").unwrap_err().contains("1 to 64 characters"));
        let error = manifest_keys("name = \"x\"\nversion = \n").unwrap_err();
        assert!(error.starts_with("not valid TOML (line 2): "), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn a_plugin_is_read_from_its_directory_or_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), "name = \"demo\"\nversion = \"1.0.0\"\n").unwrap();
        std::fs::write(dir.path().join("demo.wasm"), b"\0asm\x01\0\0\0").unwrap();
        let plugin = LocalPlugin::read(dir.path(), None).unwrap();
        assert_eq!(plugin.name, "demo");
        assert_eq!(plugin.wasm, b"\0asm\x01\0\0\0");
        assert_eq!(LocalPlugin::read(&dir.path().join(MANIFEST_FILE), None).unwrap(), plugin);
        assert_eq!(plugin.install_body(serde_json::Map::new()).wasm, "AGFzbQEAAAA=");
        assert_eq!(plugin.upgrade_body(serde_json::Map::new()).manifest, plugin.manifest);

        let other = dir.path().join("other.wasm");
        std::fs::write(&other, b"\0asm\x01\0\0\0other").unwrap();
        let plugin = LocalPlugin::read(dir.path(), Some(&other)).unwrap();
        assert_eq!(plugin.wasm, b"\0asm\x01\0\0\0other");

        let error = LocalPlugin::read(dir.path(), Some(&dir.path().join("nope.wasm"))).unwrap_err().to_string();
        assert!(error.starts_with("--wasm ") && error.ends_with("nope.wasm: no such file or directory"), "{error}");
        std::fs::remove_file(dir.path().join("demo.wasm")).unwrap();
        let error = LocalPlugin::read(dir.path(), None).unwrap_err().to_string();
        assert!(error.contains("demo.wasm: no such file") && error.contains("--wasm FILE"), "{error}");

        // The hub's answer about the manifest names it as the CLI's own messages do.
        let refused = ClientError::Api("plugin.toml: grants.subscibe: unknown field".into());
        let located = plugin.locate(refused).to_string();
        assert_eq!(located, format!("{}: grants.subscibe: unknown field", dir.path().join(MANIFEST_FILE).display()));
        let other = plugin.locate(ClientError::Api("the module was refused: x".into())).to_string();
        assert_eq!(other, "the module was refused: x");

        // Cargo's name for the module of a crate with '-' in its name.
        let cargo = tempfile::tempdir().unwrap();
        std::fs::write(cargo.path().join(MANIFEST_FILE), "name = \"fan-control\"\nversion = \"1.0.0\"\n").unwrap();
        std::fs::write(cargo.path().join("fan_control.wasm"), b"\0asm\x01\0\0\0").unwrap();
        let error = LocalPlugin::read(cargo.path(), None).unwrap_err().to_string();
        assert!(error.contains("fan-control.wasm: no such file, but fan_control.wasm is there"), "{error}");
        assert!(error.contains("set `wasm = \"fan_control.wasm\"` in plugin.toml"), "{error}");
        let error = LocalPlugin::read(&dir.path().join("missing"), None).unwrap_err().to_string();
        assert!(error.ends_with("missing: no such file or directory (give a plugin's directory or its plugin.toml)"));
        let empty = tempfile::tempdir().unwrap();
        let error = LocalPlugin::read(empty.path(), None).unwrap_err().to_string();
        assert!(error.ends_with("has no plugin.toml: is it a plugin's directory?"), "{error}");
        std::fs::write(dir.path().join(MANIFEST_FILE), "name = [\n").unwrap();
        let error = LocalPlugin::read(dir.path(), None).unwrap_err().to_string();
        assert!(error.contains("plugin.toml: not valid TOML"), "{error}");
    }
}
