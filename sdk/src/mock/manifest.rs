//! `plugin.toml` for the mock host: a reader for the small part of TOML manifests use, and the
//! manifest's rules (strict, as the hub's: unknown keys are an error).

use crate::json::{Number, Value};
use crate::Amount;

/// What a manifest grants, as the mock enforces it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `grants.subscribe`: filters the plugin may subscribe within.
    pub subscribe: Vec<String>,
    /// `grants.publish`: filters every published topic must match.
    pub publish: Vec<String>,
    /// `grants.devices`: device states it may read (`"*"` = all).
    pub devices: Vec<String>,
    /// `grants.pay`: may spend and pay stream ticks.
    pub pay: bool,
    /// `grants.invoice`: may invoice peers.
    pub invoice: bool,
    /// `grants.call`: services it may buy, with the most per call.
    pub call: Vec<(String, Amount)>,
    /// `grants.sell`: services it sells, with their price.
    pub sell: Vec<(String, Amount)>,
    /// `grants.budget`: period, limit and auto-approve threshold.
    pub budget: Option<Budget>,
}

/// `grants.budget`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// `day`, `week` or `month`.
    pub period: String,
    /// Base units per period.
    pub limit: Amount,
    /// At or under this, no owner approval.
    pub auto_approve: Amount,
}

pub(crate) struct Manifest {
    pub(crate) grants: Grants,
    pub(crate) config: Value,
    pub(crate) kv_bytes: usize,
}

impl Manifest {
    pub(crate) fn parse(text: &str) -> Result<Manifest, String> {
        let doc = parse_toml(text)?;
        let top = Table::new(&doc, "")?;
        top.only(&["name", "version", "description", "wasm", "grants", "limits", "config"])?;
        let name = top.string("name")?.ok_or("name is required")?;
        if !valid_name(name) {
            return Err(format!("name {name:?} must be 1 to 64 of a-z 0-9 _ -"));
        }
        match top.string("version")? {
            Some(v)
                if (1..=32).contains(&v.len())
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b)) => {}
            Some(v) => return Err(format!("version {v:?} must be 1 to 32 of A-Z a-z 0-9 . - +")),
            None => return Err("version is required".into()),
        }
        top.string("description")?;
        if let Some(wasm) = top.string("wasm")? {
            if wasm.is_empty() || wasm.contains('/') || !wasm.ends_with(".wasm") {
                return Err(format!("wasm {wasm:?} must be a .wasm file next to plugin.toml"));
            }
        }
        let grants = match top.table("grants")? {
            Some(t) => grants(&t)?,
            None => Grants::default(),
        };
        let mut kv_bytes = super::DEFAULT_KV_BYTES;
        if let Some(limits) = top.table("limits")? {
            limits.only(&["memory_mib", "fuel_per_event", "kv_bytes"])?;
            limits.positive("memory_mib")?;
            limits.positive("fuel_per_event")?;
            if let Some(n) = limits.positive("kv_bytes")? {
                kv_bytes = usize::try_from(n).map_err(|_| "limits.kv_bytes is too large")?;
            }
        }
        let config = match top.get("config") {
            Some(config @ Value::Object(_)) => config.clone(),
            Some(_) => return Err("config must be a table".into()),
            None => Value::object(),
        };
        Ok(Manifest { grants, config, kv_bytes })
    }
}

fn grants(t: &Table<'_>) -> Result<Grants, String> {
    t.only(&["subscribe", "publish", "devices", "pay", "invoice", "call", "sell", "budget"])?;
    let mut g = Grants {
        subscribe: t.strings("subscribe")?,
        publish: t.strings("publish")?,
        devices: t.strings("devices")?,
        pay: t.bool("pay")?.unwrap_or(false),
        invoice: t.bool("invoice")?.unwrap_or(false),
        ..Grants::default()
    };
    for filter in g.subscribe.iter().chain(&g.publish) {
        if !valid_filter(filter) || filter == "#" || filter.starts_with('$') || filter.starts_with(['+', '#']) {
            return Err(format!("grant filter {filter:?}: no bare \"#\", no wildcard first level, no \"$\""));
        }
    }
    for device in &g.devices {
        if device != "*" && !valid_name(device) {
            return Err(format!("grants.devices: {device:?} is not a device id"));
        }
    }
    for entry in t.tables("call")? {
        entry.only(&["service", "max_price"])?;
        let service = entry.string("service")?.ok_or("grants.call needs service")?;
        let most = entry.amount("max_price")?.ok_or("grants.call needs max_price")?;
        g.call.push((service.to_string(), most));
    }
    for entry in t.tables("sell")? {
        entry.only(&["service", "price", "description"])?;
        let service = entry.string("service")?.ok_or("grants.sell needs service")?;
        let price = entry.amount("price")?.ok_or("grants.sell needs price")?;
        entry.string("description")?;
        g.sell.push((service.to_string(), price));
    }
    if let Some(b) = t.table("budget")? {
        b.only(&["period", "limit", "auto_approve"])?;
        let period = b.string("period")?.ok_or("grants.budget needs period")?;
        if !["day", "week", "month"].contains(&period) {
            return Err(format!("grants.budget.period {period:?}: day, week or month"));
        }
        let limit = b.amount("limit")?.ok_or("grants.budget needs limit")?;
        let auto_approve = b.amount("auto_approve")?.unwrap_or(Amount::ZERO);
        if auto_approve > limit {
            return Err(format!("grants.budget.auto_approve {auto_approve} is above the limit {limit}"));
        }
        g.budget = Some(Budget { period: period.to_string(), limit, auto_approve });
    }
    if (g.pay || !g.call.is_empty()) && g.budget.is_none() {
        return Err("grants.budget is required when the plugin pays or calls services".into());
    }
    Ok(g)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// An MQTT filter: non-empty, `+` and `#` only as whole levels, `#` only last.
pub(crate) fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, level)| match *level {
            "+" => true,
            "#" => i + 1 == levels.len(),
            other => !other.contains(['+', '#']),
        })
}

/// Whether every topic `filter` matches is matched by `granted`.
pub(crate) fn filter_covers(granted: &str, filter: &str) -> bool {
    let mut wanted = filter.split('/');
    for level in granted.split('/') {
        if level == "#" {
            return true;
        }
        match wanted.next() {
            Some("#") | None => return false,
            Some("+") if level != "+" => return false,
            Some(w) if level != "+" && level != w => return false,
            Some(_) => {}
        }
    }
    wanted.next().is_none()
}

/// A table of the parsed document, with typed getters that name the key in their errors.
struct Table<'a> {
    members: &'a [(String, Value)],
    path: String,
}

impl<'a> Table<'a> {
    fn new(value: &'a Value, path: &str) -> Result<Table<'a>, String> {
        match value.as_object() {
            Some(members) => Ok(Table { members, path: path.to_string() }),
            None => Err(format!("{path} must be a table")),
        }
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn only(&self, keys: &[&str]) -> Result<(), String> {
        match self.members.iter().find(|(k, _)| !keys.contains(&k.as_str())) {
            Some((k, _)) => Err(format!("unknown key {}", self.name(k))),
            None => Ok(()),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{} must be a string", self.name(key))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(format!("{} must be true or false", self.name(key))),
        }
    }

    fn positive(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(Number::Int(n))) if *n > 0 => {
                u64::try_from(*n).map(Some).map_err(|_| format!("{} is too large", self.name(key)))
            }
            Some(_) => Err(format!("{} must be a positive integer", self.name(key))),
        }
    }

    /// Money in a manifest is a decimal string of base units.
    fn amount(&self, key: &str) -> Result<Option<Amount>, String> {
        let wrong = || format!("{} must be a decimal string of base units", self.name(key));
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Amount::parse(s).map(Some).map_err(|_| wrong()),
            Some(_) => Err(wrong()),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("{} must list strings", self.name(key))))
                .collect(),
            Some(_) => Err(format!("{} must be an array of strings", self.name(key))),
        }
    }

    fn table(&self, key: &str) -> Result<Option<Table<'a>>, String> {
        self.get(key).map(|v| Table::new(v, &self.name(key))).transpose()
    }

    fn tables(&self, key: &str) -> Result<Vec<Table<'a>>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|v| Table::new(v, &self.name(key))).collect(),
            Some(_) => Err(format!("{} must be an array of tables ([[{}]])", self.name(key), self.name(key))),
        }
    }
}

/// Parses the TOML that manifests use into JSON values: tables, arrays of tables, dotted keys,
/// basic and literal strings, integers, floats, booleans, arrays and inline tables. Multi-line
/// strings and dates are refused.
pub(crate) fn parse_toml(text: &str) -> Result<Value, String> {
    let mut p = TomlParser { s: text.as_bytes(), pos: 0 };
    let mut root = Value::object();
    let mut current: Vec<String> = Vec::new();
    let mut defined: Vec<Vec<String>> = Vec::new();
    loop {
        p.skip_blank_lines();
        match p.peek() {
            None => return Ok(root),
            Some(b'[') => {
                p.pos += 1;
                let array = p.eat(b'[');
                p.skip_spaces();
                let path = p.key_path()?;
                p.skip_spaces();
                if !p.eat(b']') || (array && !p.eat(b']')) {
                    return Err(p.error("expected ']' after the table name"));
                }
                if array {
                    let (last, parents) = path.split_last().ok_or_else(|| p.error("empty table name"))?;
                    let parent = table_at(&mut root, parents).map_err(|e| p.error(&e))?;
                    let slot = parent_entry(parent, last, || Value::Array(Vec::new())).map_err(|e| p.error(&e))?;
                    match slot {
                        Value::Array(items) => items.push(Value::object()),
                        _ => return Err(p.error(&format!("{} is not an array of tables", path.join(".")))),
                    }
                } else {
                    if defined.contains(&path) {
                        return Err(p.error(&format!("table {} defined twice", path.join("."))));
                    }
                    defined.push(path.clone());
                    table_at(&mut root, &path).map_err(|e| p.error(&e))?;
                }
                current = path;
            }
            Some(_) => {
                let path = p.key_path()?;
                p.skip_spaces();
                if !p.eat(b'=') {
                    return Err(p.error("expected '='"));
                }
                p.skip_spaces();
                let value = p.value(0)?;
                let (last, parents) = path.split_last().ok_or_else(|| p.error("empty key"))?;
                let full: Vec<String> = current.iter().chain(parents).cloned().collect();
                let table = table_at(&mut root, &full).map_err(|e| p.error(&e))?;
                if table.get(last).is_some() {
                    return Err(p.error(&format!("key {last} defined twice")));
                }
                table.insert(last.clone(), value);
            }
        }
        p.end_of_line()?;
    }
}

/// The table at `path`, creating missing tables; through an array of tables, its last table.
fn table_at<'v>(root: &'v mut Value, path: &[String]) -> Result<&'v mut Value, String> {
    let mut table = root;
    for key in path {
        let entry = parent_entry(table, key, Value::object)?;
        table = match entry {
            Value::Array(items) => items.last_mut().ok_or_else(|| format!("{key} is not a table"))?,
            other => other,
        };
        if table.as_object().is_none() {
            return Err(format!("{key} is not a table"));
        }
    }
    Ok(table)
}

/// The member `key` of the table `table`, inserted with `make` if missing.
fn parent_entry<'v>(table: &'v mut Value, key: &str, make: impl FnOnce() -> Value) -> Result<&'v mut Value, String> {
    let members = match table {
        Value::Object(members) => members,
        _ => return Err(format!("{key}'s parent is not a table")),
    };
    let index = match members.iter().position(|(k, _)| k == key) {
        Some(index) => index,
        None => {
            members.push((key.to_string(), make()));
            members.len() - 1
        }
    };
    members.get_mut(index).map(|(_, v)| v).ok_or_else(|| format!("{key} vanished"))
}

struct TomlParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl TomlParser<'_> {
    fn error(&self, message: &str) -> String {
        let line = self.s.get(..self.pos).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) + 1;
        format!("plugin.toml line {line}: {message}")
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while let Some(b' ' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn skip_comment(&mut self) {
        if self.peek() == Some(b'#') {
            while !matches!(self.peek(), None | Some(b'\n')) {
                self.pos += 1;
            }
        }
    }

    fn skip_blank_lines(&mut self) {
        loop {
            self.skip_spaces();
            self.skip_comment();
            match self.peek() {
                Some(b'\n') => self.pos += 1,
                Some(b'\r') if self.s.get(self.pos + 1) == Some(&b'\n') => self.pos += 2,
                _ => return,
            }
        }
    }

    /// Whitespace, comments and newlines inside arrays and inline tables' surroundings.
    fn skip_all(&mut self) {
        loop {
            self.skip_spaces();
            self.skip_comment();
            match self.peek() {
                Some(b'\n' | b'\r') => self.pos += 1,
                _ => return,
            }
        }
    }

    fn end_of_line(&mut self) -> Result<(), String> {
        self.skip_spaces();
        self.skip_comment();
        match self.peek() {
            None | Some(b'\n') => Ok(()),
            Some(b'\r') if self.s.get(self.pos + 1) == Some(&b'\n') => Ok(()),
            _ => Err(self.error("expected the end of the line")),
        }
    }

    fn key_path(&mut self) -> Result<Vec<String>, String> {
        let mut path = vec![self.key()?];
        loop {
            self.skip_spaces();
            if !self.eat(b'.') {
                return Ok(path);
            }
            self.skip_spaces();
            path.push(self.key()?);
        }
    }

    fn key(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(b'"') => self.basic_string(),
            Some(b'\'') => self.literal_string(),
            _ => {
                let start = self.pos;
                while let Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-') = self.peek() {
                    self.pos += 1;
                }
                match self.s.get(start..self.pos) {
                    Some(bytes) if !bytes.is_empty() => Ok(String::from_utf8_lossy(bytes).into_owned()),
                    _ => Err(self.error("expected a key")),
                }
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > 32 {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => {
                if self.s.get(self.pos..self.pos + 3) == Some(b"\"\"\"") {
                    return Err(self.error("multi-line strings are not supported here"));
                }
                self.basic_string().map(Value::String)
            }
            Some(b'\'') => self.literal_string().map(Value::String),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_all();
                    if self.eat(b']') {
                        return Ok(Value::Array(items));
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_all();
                    if !self.eat(b',') {
                        self.skip_all();
                        if self.eat(b']') {
                            return Ok(Value::Array(items));
                        }
                        return Err(self.error("expected ',' or ']'"));
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut table = Value::object();
                self.skip_spaces();
                if self.eat(b'}') {
                    return Ok(table);
                }
                loop {
                    self.skip_spaces();
                    let path = self.key_path()?;
                    self.skip_spaces();
                    if !self.eat(b'=') {
                        return Err(self.error("expected '='"));
                    }
                    self.skip_spaces();
                    let value = self.value(depth + 1)?;
                    let (last, parents) = path.split_last().ok_or_else(|| self.error("empty key"))?;
                    let target = table_at(&mut table, parents).map_err(|e| self.error(&e))?;
                    if target.get(last).is_some() {
                        return Err(self.error(&format!("key {last} defined twice")));
                    }
                    target.insert(last.clone(), value);
                    self.skip_spaces();
                    if self.eat(b'}') {
                        return Ok(table);
                    }
                    if !self.eat(b',') {
                        return Err(self.error("expected ',' or '}'"));
                    }
                }
            }
            _ => self.scalar(),
        }
    }

    /// true, false, an integer or a float.
    fn scalar(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while let Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'+' | b'-' | b'.' | b':') = self.peek() {
            self.pos += 1;
        }
        let word = self.s.get(start..self.pos).map(String::from_utf8_lossy).unwrap_or_default();
        match word.as_ref() {
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            "" => return Err(self.error("expected a value")),
            _ => {}
        }
        let digits = word.replace('_', "");
        let looks_numeric = digits.trim_start_matches(['+', '-']).bytes().next().map_or(false, |b| b.is_ascii_digit());
        if !looks_numeric || word.contains("__") || word.starts_with('_') || word.ends_with('_') {
            return Err(self.error(&format!("unsupported value {word}")));
        }
        let is_float = digits.contains(['.', 'e', 'E']);
        if !is_float {
            if let Ok(n) = digits.parse::<i64>() {
                return Ok(Value::Number(Number::Int(i128::from(n))));
            }
        } else if let Ok(f) = digits.parse::<f64>() {
            if f.is_finite() && !digits.contains(['i', 'n']) {
                return Ok(Value::Number(Number::Float(f)));
            }
        }
        Err(self.error(&format!("unsupported value {word}")))
    }

    fn literal_string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'\'') => break,
                None | Some(b'\n') => return Err(self.error("unterminated string")),
                Some(_) => self.pos += 1,
            }
        }
        let text = self.s.get(start..self.pos).map(String::from_utf8_lossy).unwrap_or_default().into_owned();
        self.pos += 1;
        Ok(text)
    }

    fn basic_string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let byte = self.peek().ok_or_else(|| self.error("unterminated string"))?;
            self.pos += 1;
            match byte {
                b'"' => return String::from_utf8(out).map_err(|_| self.error("not UTF-8")),
                b'\n' => return Err(self.error("unterminated string")),
                b'\\' => {
                    let escape = self.peek().ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' | b'U' => {
                            let n = if escape == b'u' { 4 } else { 8 };
                            let hex = self.s.get(self.pos..self.pos + n).ok_or_else(|| self.error("bad escape"))?;
                            let hex = core::str::from_utf8(hex).map_err(|_| self.error("bad escape"))?;
                            let code = u32::from_str_radix(hex, 16).map_err(|_| self.error("bad escape"))?;
                            self.pos += n;
                            char::from_u32(code).ok_or_else(|| self.error("bad escape"))?
                        }
                        _ => return Err(self.error("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_toml_manifests_use() {
        let doc = parse_toml(
            r#"
# a comment
name = "x"   # trailing comment
n = -1_000
f = 12.5
yes = true
list = [
  "a", # comment in an array
  'b\c',
]
inline = { a = 1, b.c = "d" }
"quoted key" = "\u00e9\"\\"

[t.sub]
k = 1
[[arr]]
v = 1
[[arr]]
v = 2
[arr.inner]
w = 3
"#,
        )
        .unwrap();
        assert_eq!(
            doc.to_string(),
            r#"{"name":"x","n":-1000,"f":12.5,"yes":true,"list":["a","b\\c"],"inline":{"a":1,"b":{"c":"d"}},"quoted key":"é\"\\","t":{"sub":{"k":1}},"arr":[{"v":1},{"v":2,"inner":{"w":3}}]}"#
        );
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        for bad in [
            "a = ",
            "a = 1 2",
            "a = \"x",
            "a = \"\"\"x\"\"\"",
            "a = 1979-05-27",
            "a = inf",
            "a = [1,",
            "a = {b = 1",
            "a = 1\na = 2",
            "[t]\n[t]",
            "[t",
            "= 1",
            "a = 1__0",
            "a = \"\\q\"",
            "a = 1\n[a]",
        ] {
            assert!(parse_toml(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn manifests_are_checked_strictly() {
        let ok = "name = \"p\"\nversion = \"0.1.0\"\n";
        assert!(Manifest::parse(ok).is_ok());
        for (bad, why) in [
            ("version = \"1\"", "name is required"),
            ("name = \"P\"\nversion = \"1\"", "name"),
            ("name = \"p\"\nversion = \"1\"\ncolour = 1", "unknown key colour"),
            ("name = \"p\"\nversion = \"1\"\n[grants]\npublsh = []", "unknown key grants.publsh"),
            ("name = \"p\"\nversion = \"1\"\n[grants]\nsubscribe = [\"#\"]", "bare"),
            ("name = \"p\"\nversion = \"1\"\n[grants]\npublish = [\"+/x\"]", "wildcard first level"),
            ("name = \"p\"\nversion = \"1\"\n[grants]\npublish = [\"$SYS/x\"]", "$"),
            ("name = \"p\"\nversion = \"1\"\n[grants]\npay = true", "budget is required"),
            ("name = \"p\"\nversion = \"1\"\n[[grants.call]]\nservice = \"s\"\nmax_price = 5", "decimal string"),
            ("name = \"p\"\nversion = \"1\"\n[grants.budget]\nperiod = \"year\"\nlimit = \"1\"", "period"),
            ("name = \"p\"\nversion = \"1\"\n[limits]\nmemory_mib = 0", "positive"),
            ("name = \"p\"\nversion = \"1 beta\"", "version"),
            (
                "name = \"p\"\nversion = \"1\"\n[grants.budget]\nperiod = \"day\"\nlimit = \"1\"\nauto_approve = \"2\"",
                "above the limit",
            ),
            ("name = \"p\"\nversion = \"1\"\nconfig = 1", "config must be a table"),
        ] {
            match Manifest::parse(bad) {
                Ok(_) => panic!("accepted {bad:?}"),
                Err(e) => assert!(e.contains(why), "{bad:?}: {e}"),
            }
        }
    }

    #[test]
    fn granted_filters_cover_narrower_ones() {
        assert!(filter_covers("a/#", "a/b/c"));
        assert!(filter_covers("a/#", "a/+/c"));
        assert!(filter_covers("a/#", "a/#"));
        assert!(filter_covers("a/+/c", "a/b/c"));
        assert!(filter_covers("a/+/c", "a/+/c"));
        assert!(!filter_covers("a/b/c", "a/+/c"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/b/c"));
        assert!(!filter_covers("a/b/c", "a/b"));
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter(""));
    }
}
