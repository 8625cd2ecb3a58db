//! Device profiles: which GATT characteristics of a kind of appliance are state fields, events
//! and commands, and how their bytes map to JSON. Pure functions over bytes, so everything a
//! peripheral or an MQTT client sends can be property-tested here without a radio.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Number, Value};
use uuid::Uuid;

/// Longest value a GATT attribute can hold (Core spec, Vol 3, Part F, 3.2.9).
pub const MAX_ATTRIBUTE_LEN: usize = 512;
/// Longest field, command and profile name.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read BLE profile {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("BLE profile {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("BLE profile {path}: key `{key}`: {message}")]
    Key { path: PathBuf, key: String, message: String },
    #[error("BLE profiles {first} and {second} are both named {name:?}")]
    DuplicateProfile { name: String, first: PathBuf, second: PathBuf },
    #[error("{format}: expected {expected} bytes, got {got}")]
    Length { format: Format, expected: usize, got: usize },
    #[error("{format}: {reason}")]
    Malformed { format: Format, reason: &'static str },
    #[error("{format}: {value} is out of range")]
    OutOfRange { format: Format, value: f64 },
    #[error("{format}: value too long ({len} bytes, at most {MAX_ATTRIBUTE_LEN})")]
    TooLong { format: Format, len: usize },
}

/// How a characteristic's bytes encode a value. Multi-byte formats are little-endian, as GATT's
/// own characteristics are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    U8,
    I8,
    U16le,
    I16le,
    U32le,
    I32le,
    F32le,
    Utf8,
    Bool,
}

impl Format {
    /// Whether the value is a number, and so may be scaled.
    pub fn is_numeric(self) -> bool {
        !matches!(self, Format::Utf8 | Format::Bool)
    }

    /// Integer formats: their range.
    fn integer_range(self) -> Option<(i64, i64)> {
        match self {
            Format::U8 => Some((0, u8::MAX.into())),
            Format::I8 => Some((i8::MIN.into(), i8::MAX.into())),
            Format::U16le => Some((0, u16::MAX.into())),
            Format::I16le => Some((i16::MIN.into(), i16::MAX.into())),
            Format::U32le => Some((0, u32::MAX.into())),
            Format::I32le => Some((i32::MIN.into(), i32::MAX.into())),
            Format::F32le | Format::Utf8 | Format::Bool => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::U8 => "u8",
            Format::I8 => "i8",
            Format::U16le => "u16le",
            Format::I16le => "i16le",
            Format::U32le => "u32le",
            Format::I32le => "i32le",
            Format::F32le => "f32le",
            Format::Utf8 => "utf8",
            Format::Bool => "bool",
        })
    }
}

/// A characteristic read into the device's state, or (`event`) whose notifications are events.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The state JSON key, or the event's name.
    pub name: String,
    pub characteristic: Uuid,
    pub format: Format,
    pub scale: Option<f64>,
    /// Subscribe to notifications; otherwise the value is read on connect and polled.
    pub notify: bool,
    /// Each notification is an event named `name`, not a state field.
    pub event: bool,
}

/// A characteristic written when the command `name` arrives.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// The last segment of `machinomy/<device>/cmd/<name>`.
    pub name: String,
    pub characteristic: Uuid,
    pub format: Format,
    /// The command's JSON number is divided by this before encoding.
    pub scale: Option<f64>,
}

/// A validated profile: names are unique and well formed, scales are finite, non-zero and only
/// on numeric formats, no two fields share a characteristic, and there is at least one field.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceProfile {
    name: String,
    service: Uuid,
    fields: Vec<Field>,
    commands: Vec<Command>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    service: Uuid,
    #[serde(default)]
    field: Vec<RawField>,
    #[serde(default)]
    command: Vec<RawCommand>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    characteristic: Uuid,
    format: Format,
    scale: Option<f64>,
    #[serde(default)]
    notify: bool,
    #[serde(default)]
    event: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    name: String,
    characteristic: Uuid,
    format: Format,
    scale: Option<f64>,
}

impl DeviceProfile {
    /// Parses and validates a profile; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<DeviceProfile, ProfileError> {
        let raw: RawProfile = crate::config::parse_strict(text).map_err(|e| match e.key {
            Some(key) => ProfileError::Key { path: path.to_owned(), key, message: e.message },
            None => ProfileError::Syntax { path: path.to_owned(), message: e.message },
        })?;
        raw.validate(path)
    }

    pub fn load(path: &Path) -> Result<DeviceProfile, ProfileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ProfileError::Read { path: path.to_owned(), source })?;
        DeviceProfile::parse(&text, path)
    }

    /// Loads every `*.toml` in `dir`, keyed by profile name (not file name).
    pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, DeviceProfile>, ProfileError> {
        let read_error = |source| ProfileError::Read { path: dir.to_owned(), source };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        // Sorted, so which of two duplicates is "first" does not depend on the file system.
        paths.sort();
        let mut profiles: BTreeMap<String, (PathBuf, DeviceProfile)> = BTreeMap::new();
        for path in paths {
            let profile = DeviceProfile::load(&path)?;
            if let Some((first, _)) = profiles.get(&profile.name) {
                return Err(ProfileError::DuplicateProfile { name: profile.name, first: first.clone(), second: path });
            }
            profiles.insert(profile.name.clone(), (path, profile));
        }
        Ok(profiles.into_iter().map(|(name, (_, profile))| (name, profile)).collect())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The primary service, used to filter scans.
    pub fn service(&self) -> Uuid {
        self.service
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    pub fn command(&self, name: &str) -> Option<&Command> {
        self.commands.iter().find(|c| c.name == name)
    }

    /// The field a notification from `characteristic` belongs to.
    pub fn field_for(&self, characteristic: Uuid) -> Option<&Field> {
        self.fields.iter().find(|f| f.characteristic == characteristic)
    }
}

impl RawProfile {
    fn validate(self, path: &Path) -> Result<DeviceProfile, ProfileError> {
        let key_error =
            |key: String, message: &str| ProfileError::Key { path: path.to_owned(), key, message: message.to_owned() };
        if !valid_name(&self.name) {
            return Err(key_error("name".into(), NAME_RULE));
        }
        if self.field.is_empty() {
            return Err(key_error("field".into(), "a profile needs at least one [[field]]"));
        }
        let mut names = BTreeSet::new();
        let mut characteristics = BTreeSet::new();
        let mut fields = Vec::with_capacity(self.field.len());
        for (i, raw) in self.field.into_iter().enumerate() {
            let key = |name: &str| format!("field[{i}].{name}");
            if !valid_name(&raw.name) {
                return Err(key_error(key("name"), NAME_RULE));
            }
            // State keys and event names share the field namespace: one name, one meaning.
            if !names.insert(raw.name.clone()) {
                return Err(key_error(key("name"), "another field has this name"));
            }
            // A notification is dispatched by characteristic: two fields on one would be ambiguous.
            if !characteristics.insert(raw.characteristic) {
                return Err(key_error(key("characteristic"), "another field uses this characteristic"));
            }
            check_scale(raw.format, raw.scale).map_err(|message| key_error(key("scale"), message))?;
            if raw.event && !raw.notify {
                return Err(key_error(key("event"), "an event field must also have notify = true"));
            }
            fields.push(Field {
                name: raw.name,
                characteristic: raw.characteristic,
                format: raw.format,
                scale: raw.scale,
                notify: raw.notify,
                event: raw.event,
            });
        }
        let mut names = BTreeSet::new();
        let mut commands = Vec::with_capacity(self.command.len());
        for (i, raw) in self.command.into_iter().enumerate() {
            let key = |name: &str| format!("command[{i}].{name}");
            if !valid_name(&raw.name) {
                return Err(key_error(key("name"), NAME_RULE));
            }
            if !names.insert(raw.name.clone()) {
                return Err(key_error(key("name"), "another command has this name"));
            }
            check_scale(raw.format, raw.scale).map_err(|message| key_error(key("scale"), message))?;
            commands.push(Command {
                name: raw.name,
                characteristic: raw.characteristic,
                format: raw.format,
                scale: raw.scale,
            });
        }
        Ok(DeviceProfile { name: self.name, service: self.service, fields, commands })
    }
}

const NAME_RULE: &str = "must be 1 to 64 characters from a-z, 0-9 and _";

/// Names become JSON keys and MQTT topic segments, so they are kept to a safe alphabet.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_scale(format: Format, scale: Option<f64>) -> Result<(), &'static str> {
    match scale {
        None => Ok(()),
        Some(_) if !format.is_numeric() => Err("only numeric formats can be scaled"),
        Some(s) if !s.is_finite() || s == 0.0 => Err("must be a finite, non-zero number"),
        Some(_) => Ok(()),
    }
}

/// A scale such as 0.01 is not exact in binary; dividing by its exact integer inverse gives the
/// decimal a user expects (2150 → 21.5, not 21.500000000000004).
fn integer_inverse(scale: f64) -> Option<f64> {
    let inverse = 1.0 / scale;
    let rounded = inverse.round();
    (rounded != 0.0 && (inverse - rounded).abs() <= 1e-9 * rounded.abs()).then_some(rounded)
}

fn apply_scale(raw: f64, scale: Option<f64>) -> f64 {
    match scale {
        None => raw,
        Some(s) => match integer_inverse(s) {
            Some(inverse) => raw / inverse,
            None => raw * s,
        },
    }
}

fn remove_scale(value: f64, scale: Option<f64>) -> f64 {
    match scale {
        None => value,
        Some(s) => match integer_inverse(s) {
            Some(inverse) => value * inverse,
            None => value / s,
        },
    }
}

fn exact<const N: usize>(format: Format, bytes: &[u8]) -> Result<[u8; N], ProfileError> {
    <[u8; N]>::try_from(bytes).map_err(|_| ProfileError::Length { format, expected: N, got: bytes.len() })
}

fn finite_number(format: Format, value: f64) -> Result<Value, ProfileError> {
    Number::from_f64(value).map(Value::Number).ok_or(ProfileError::Malformed { format, reason: "not a finite number" })
}

/// Decodes a characteristic's value. Lengths must match the format exactly: a peripheral that
/// sends something else is misconfigured, and guessing would put wrong values into the home.
pub fn decode(format: Format, scale: Option<f64>, bytes: &[u8]) -> Result<Value, ProfileError> {
    let raw: i64 = match format {
        Format::U8 => u8::from_le_bytes(exact(format, bytes)?).into(),
        Format::I8 => i8::from_le_bytes(exact(format, bytes)?).into(),
        Format::U16le => u16::from_le_bytes(exact(format, bytes)?).into(),
        Format::I16le => i16::from_le_bytes(exact(format, bytes)?).into(),
        Format::U32le => u32::from_le_bytes(exact(format, bytes)?).into(),
        Format::I32le => i32::from_le_bytes(exact(format, bytes)?).into(),
        Format::F32le => {
            let value = f32::from_le_bytes(exact(format, bytes)?);
            if !value.is_finite() {
                return Err(ProfileError::Malformed { format, reason: "not a finite number" });
            }
            // Through the shortest decimal that is this f32, so 0.1f32 reads as 0.1, not
            // 0.10000000149011612.
            let value = value.to_string().parse::<f64>().unwrap_or(f64::from(value));
            return finite_number(format, apply_scale(value, scale));
        }
        Format::Utf8 => {
            if bytes.len() > MAX_ATTRIBUTE_LEN {
                return Err(ProfileError::TooLong { format, len: bytes.len() });
            }
            let text =
                std::str::from_utf8(bytes).map_err(|_| ProfileError::Malformed { format, reason: "not UTF-8" })?;
            return Ok(Value::String(text.to_owned()));
        }
        Format::Bool => {
            return match exact::<1>(format, bytes)? {
                [0] => Ok(Value::Bool(false)),
                [1] => Ok(Value::Bool(true)),
                _ => Err(ProfileError::Malformed { format, reason: "a bool byte must be 0 or 1" }),
            };
        }
    };
    match scale {
        None => Ok(Value::from(raw)),
        // i64 → f64 is exact for every value up to 32 bits.
        Some(_) => finite_number(format, apply_scale(raw as f64, scale)),
    }
}

/// Encodes a command's JSON value. Scaled integers are rounded to the nearest step; an unscaled
/// integer format takes only whole numbers.
pub fn encode(format: Format, scale: Option<f64>, value: &Value) -> Result<Vec<u8>, ProfileError> {
    match format {
        Format::Utf8 => {
            let text = value.as_str().ok_or(ProfileError::Malformed { format, reason: "expected a string" })?;
            if text.len() > MAX_ATTRIBUTE_LEN {
                return Err(ProfileError::TooLong { format, len: text.len() });
            }
            return Ok(text.as_bytes().to_vec());
        }
        Format::Bool => {
            let flag = value.as_bool().ok_or(ProfileError::Malformed { format, reason: "expected true or false" })?;
            return Ok(vec![u8::from(flag)]);
        }
        _ => {}
    }
    let number = value.as_f64().ok_or(ProfileError::Malformed { format, reason: "expected a number" })?;
    let unscaled = remove_scale(number, scale);
    if !unscaled.is_finite() {
        return Err(ProfileError::OutOfRange { format, value: number });
    }
    let Some((min, max)) = format.integer_range() else {
        // F32le: the only numeric format that is not an integer.
        if unscaled.abs() > f64::from(f32::MAX) {
            return Err(ProfileError::OutOfRange { format, value: number });
        }
        return Ok((unscaled as f32).to_le_bytes().to_vec());
    };
    let whole = if scale.is_some() { unscaled.round() } else { unscaled };
    if whole.fract() != 0.0 {
        return Err(ProfileError::Malformed { format, reason: "expected a whole number" });
    }
    // Checked in f64 first, so the cast below cannot saturate.
    if whole < min as f64 || whole > max as f64 {
        return Err(ProfileError::OutOfRange { format, value: number });
    }
    let whole = whole as i64;
    let out_of_range = |_| ProfileError::OutOfRange { format, value: number };
    Ok(match format {
        Format::U8 => u8::try_from(whole).map_err(out_of_range)?.to_le_bytes().to_vec(),
        Format::I8 => i8::try_from(whole).map_err(out_of_range)?.to_le_bytes().to_vec(),
        Format::U16le => u16::try_from(whole).map_err(out_of_range)?.to_le_bytes().to_vec(),
        Format::I16le => i16::try_from(whole).map_err(out_of_range)?.to_le_bytes().to_vec(),
        Format::U32le => u32::try_from(whole).map_err(out_of_range)?.to_le_bytes().to_vec(),
        // I32le: the non-integer formats returned above.
        _ => i32::try_from(whole).map_err(out_of_range)?.to_le_bytes().to_vec(),
    })
}
