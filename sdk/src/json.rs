//! A small JSON reader and writer, enough for device states, config and service answers.
//!
//! Integers keep their exact value (up to `i128`), so ids and amounts written as JSON numbers
//! survive a round trip; other numbers are `f64`. Objects keep their keys in order (a repeated key
//! keeps its first position and its last value). [`parse`] never panics: malformed input, input
//! nested deeper than [`MAX_DEPTH`] and numbers out of the `f64` range are an [`Error`].
//!
//! ```
//! use machinomy_sdk::json::{self, Value};
//!
//! let state = json::parse(br#"{"energy_wh": 12345, "on": true, "label": "hall \u00e9"}"#).unwrap();
//! assert_eq!(state.get("energy_wh").and_then(Value::as_u64), Some(12345));
//! assert_eq!(state.get("label").and_then(Value::as_str), Some("hall é"));
//!
//! let statement = Value::object().with("bill", 3u64).with("status", "invoiced");
//! assert_eq!(statement.to_string(), r#"{"bill":3,"status":"invoiced"}"#);
//! ```

use core::fmt::{self, Write as _};
use core::str::FromStr;

use crate::Amount;

/// How deep arrays and objects may nest in [`parse`]'s input.
pub const MAX_DEPTH: usize = 64;

/// A JSON value.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, its members in order; keys are unique.
    Object(Vec<(String, Value)>),
}

/// A JSON number: an exact integer when the text is one and fits `i128`, else an `f64`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    /// An integer, exactly (written without fraction or exponent).
    Int(i128),
    /// Any other number.
    Float(f64),
}

/// Why [`parse`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    /// Byte offset in the input where the problem was found.
    pub offset: usize,
    /// What is wrong there.
    pub reason: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for Error {}

/// Parses one JSON value (with optional surrounding whitespace) from UTF-8 bytes.
pub fn parse(input: &[u8]) -> Result<Value, Error> {
    if let Err(e) = core::str::from_utf8(input) {
        return Err(Error { offset: e.valid_up_to(), reason: "not UTF-8" });
    }
    let mut parser = Parser { input, pos: 0 };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != input.len() {
        return Err(parser.error("trailing characters after the value"));
    }
    Ok(value)
}

impl FromStr for Value {
    type Err = Error;

    fn from_str(s: &str) -> Result<Value, Error> {
        parse(s.as_bytes())
    }
}

struct Parser<'a> {
    /// Valid UTF-8 (checked by `parse`).
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, reason: &'static str) -> Error {
        Error { offset: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), Error> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        match self.peek() {
            None => Err(self.error("unexpected end of input")),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'[') => self.array(depth + 1),
            Some(b'{') => self.object(depth + 1),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            Some(_) => Err(self.error("expected a value")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Value) -> Result<Value, Error> {
        if self.input.get(self.pos..self.pos + word.len()) == Some(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("expected null, true or false"))
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.pos += 1; // '{'
        let mut object = Value::Object(Vec::new());
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(object);
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':', "expected ':'")?;
            self.skip_ws();
            let value = self.value(depth)?;
            object.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(object);
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn string(&mut self) -> Result<String, Error> {
        self.pos += 1; // '"'
        let mut out = String::new();
        let mut start = self.pos;
        loop {
            let byte = match self.peek() {
                Some(byte) => byte,
                None => return Err(self.error("unterminated string")),
            };
            match byte {
                b'"' | b'\\' => {
                    out.push_str(self.text(start, self.pos)?);
                    self.pos += 1;
                    if byte == b'"' {
                        return Ok(out);
                    }
                    self.escape(&mut out)?;
                    start = self.pos;
                }
                0x00..=0x1f => return Err(self.error("control character in a string")),
                _ => self.pos += 1,
            }
        }
    }

    /// `input[start..end]` as text. `parse` checked that the input is UTF-8, and both ends sit
    /// next to ASCII bytes, so this cannot fail; it still answers an error rather than panic.
    fn text(&self, start: usize, end: usize) -> Result<&'a str, Error> {
        self.input
            .get(start..end)
            .and_then(|bytes| core::str::from_utf8(bytes).ok())
            .ok_or(Error { offset: start, reason: "not UTF-8" })
    }

    /// After a backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), Error> {
        let byte = self.peek().ok_or_else(|| self.error("unterminated string"))?;
        self.pos += 1;
        let c = match byte {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                match first {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by an escaped low one.
                        if self.input.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(self.error("lone surrogate in \\u escape"));
                        }
                        self.pos += 2;
                        let second = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(self.error("lone surrogate in \\u escape"));
                        }
                        let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.error("bad \\u escape"))?
                    }
                    0xDC00..=0xDFFF => return Err(self.error("lone surrogate in \\u escape")),
                    _ => char::from_u32(first).ok_or_else(|| self.error("bad \\u escape"))?,
                }
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("unknown escape"));
            }
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut code = 0u32;
        for _ in 0..4 {
            let digit =
                self.peek().and_then(|b| (b as char).to_digit(16)).ok_or_else(|| self.error("bad \\u escape"))?;
            code = code * 16 + digit;
            self.pos += 1;
        }
        Ok(code)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Number, Error> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("expected a digit")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("expected a digit in the exponent"));
            }
        }
        let text = self.text(start, self.pos)?;
        if integer {
            if let Ok(n) = text.parse::<i128>() {
                return Ok(Number::Int(n));
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Number::Float(f)),
            _ => Err(Error { offset: start, reason: "number out of range" }),
        }
    }
}

/// 2^64 and 2^63 as `f64`, the first values out of `u64` and `i64` range.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
const TWO_POW_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

impl Number {
    /// The value as an `f64` (large integers round).
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(n) => n as f64,
            Number::Float(f) => f,
        }
    }

    /// The value as an exact integer: an `Int`, or a `Float` with no fractional part in range.
    pub fn as_i128(self) -> Option<i128> {
        match self {
            Number::Int(n) => Some(n),
            Number::Float(f) if f.fract() == 0.0 && f.abs() < TWO_POW_127 => Some(f as i128),
            Number::Float(_) => None,
        }
    }

    /// The value as a `u64`, if it is an integer in range.
    pub fn as_u64(self) -> Option<u64> {
        match self {
            Number::Int(n) => u64::try_from(n).ok(),
            Number::Float(f) if f.fract() == 0.0 && (0.0..TWO_POW_64).contains(&f) => Some(f as u64),
            Number::Float(_) => None,
        }
    }

    /// The value as an `i64`, if it is an integer in range.
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Number::Int(n) => i64::try_from(n).ok(),
            Number::Float(f) if f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) => Some(f as i64),
            Number::Float(_) => None,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Number::Int(n) => write!(f, "{n}"),
            // Rust prints finite floats without an exponent (valid JSON) and in the fewest digits
            // that read back exactly; a whole float keeps its ".0" so it reads back as a float.
            // JSON has no NaN or infinity, so those become null.
            Number::Float(x) if x.is_finite() && x.fract() == 0.0 => write!(f, "{x:.1}"),
            Number::Float(x) if x.is_finite() => write!(f, "{x}"),
            Number::Float(_) => f.write_str("null"),
        }
    }
}

impl Value {
    /// An empty object, to build on with [`Value::with`].
    pub fn object() -> Value {
        Value::Object(Vec::new())
    }

    /// This object with `key` set to `value` (replacing an earlier value of that key). Does
    /// nothing to a value that is not an object.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Value {
        self.insert(key, value);
        self
    }

    /// Sets `key` in an object, keeping its position if it exists; returns the previous value.
    /// Does nothing (and returns `None`) if `self` is not an object.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let members = match self {
            Value::Object(members) => members,
            _ => return None,
        };
        let key = key.into();
        let value = value.into();
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => Some(core::mem::replace(slot, value)),
            None => {
                members.push((key, value));
                None
            }
        }
    }

    /// Removes `key` from an object and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        match self {
            Value::Object(members) => {
                let index = members.iter().position(|(k, _)| k == key)?;
                Some(members.remove(index).1)
            }
            _ => None,
        }
    }

    /// The member `key` of an object; `None` for a missing key or a value that is not an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Element `index` of an array.
    pub fn at(&self, index: usize) -> Option<&Value> {
        self.as_array()?.get(index)
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number, if this is one.
    pub fn as_number(&self) -> Option<Number> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The number as an `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(Number::as_f64)
    }

    /// The number as a `u64`, if it is an integer in range.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_number().and_then(Number::as_u64)
    }

    /// The number as an `i64`, if it is an integer in range.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_number().and_then(Number::as_i64)
    }

    /// The number as an exact `i128`, if it is an integer.
    pub fn as_i128(&self) -> Option<i128> {
        self.as_number().and_then(Number::as_i128)
    }

    /// An amount of base units: a decimal string (how JSON carries money) or a non-negative
    /// integer number.
    pub fn as_amount(&self) -> Option<Amount> {
        match self {
            Value::String(s) => Amount::parse(s).ok(),
            Value::Number(Number::Int(n)) => u128::try_from(*n).ok().map(Amount),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The members in order, if this is an object.
    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(members) => Some(members),
            _ => None,
        }
    }
}

/// Writes `s` as a JSON string literal.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        f.write_str(s.get(start..i).unwrap_or_default())?;
        if escape.is_empty() {
            write!(f, "\\u{:04x}", c as u32)?;
        } else {
            f.write_str(escape)?;
        }
        start = i + c.len_utf8();
    }
    f.write_str(s.get(start..).unwrap_or_default())?;
    f.write_char('"')
}

/// Compact JSON: `value.to_string()` is the text to publish.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Value::Number(n) => fmt::Display::fmt(n, f),
            Value::String(s) => write_string(f, s),
            Value::Array(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    fmt::Display::fmt(item, f)?;
                }
                f.write_char(']')
            }
            Value::Object(members) => {
                f.write_char('{')?;
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, key)?;
                    f.write_char(':')?;
                    fmt::Display::fmt(value, f)?;
                }
                f.write_char('}')
            }
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::String(s.clone())
    }
}

macro_rules! from_integer {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Value {
                Value::Number(Number::Int(i128::from(n)))
            }
        }
    )*};
}
from_integer!(i8, i16, i32, i64, i128, u8, u16, u32, u64);

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Number(Number::Float(f))
    }
}

impl From<Number> for Value {
    fn from(n: Number) -> Value {
        Value::Number(n)
    }
}

/// Money goes into JSON as a decimal string.
impl From<Amount> for Value {
    fn from(a: Amount) -> Value {
        Value::String(a.to_string())
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Value {
        match parse(text.as_bytes()) {
            Ok(v) => v,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    #[test]
    fn parses_every_kind_of_value() {
        assert_eq!(ok("null"), Value::Null);
        assert_eq!(ok(" true "), Value::Bool(true));
        assert_eq!(ok("false"), Value::Bool(false));
        assert_eq!(ok("0"), Value::Number(Number::Int(0)));
        assert_eq!(ok("-12"), Value::Number(Number::Int(-12)));
        assert_eq!(ok("12.5"), Value::Number(Number::Float(12.5)));
        assert_eq!(ok("-1.5e2"), Value::Number(Number::Float(-150.0)));
        assert_eq!(ok("1E+2"), Value::Number(Number::Float(100.0)));
        assert_eq!(ok(r#""hi""#), Value::String("hi".into()));
        assert_eq!(ok("[]"), Value::Array(vec![]));
        assert_eq!(ok("{}"), Value::object());
        assert_eq!(
            ok(r#" { "a" : [1, {"b": null}] , "c":"d" } "#),
            Value::object().with("a", vec![Value::from(1u8), Value::object().with("b", Value::Null)]).with("c", "d")
        );
    }

    #[test]
    fn integers_stay_exact() {
        let big = "170141183460469231731687303715884105727"; // i128::MAX
        assert_eq!(ok(big).as_i128(), Some(i128::MAX));
        assert_eq!(ok(big).to_string(), big);
        assert_eq!(ok("9007199254740993").as_u64(), Some(9_007_199_254_740_993)); // 2^53 + 1
        assert_eq!(ok("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(ok("18446744073709551616").as_u64(), None);
        assert_eq!(ok("-1").as_u64(), None);
        assert_eq!(ok("-1").as_i64(), Some(-1));
        assert_eq!(ok("3.0").as_u64(), Some(3));
        assert_eq!(ok("3.5").as_u64(), None);
        assert_eq!(ok("3.5").as_i64(), None);
        assert_eq!(ok("1e300").as_u64(), None);
        assert_eq!(ok("1e300").as_i64(), None);
        // Beyond i128 the number is still accepted, as a float.
        assert_eq!(ok("1701411834604692317316873037158841057270").as_f64(), Some(1.701_411_834_604_692_3e39));
    }

    #[test]
    fn amounts_come_from_strings_or_integers() {
        assert_eq!(ok(r#""340282366920938463463374607431768211455""#).as_amount(), Some(Amount(u128::MAX)));
        assert_eq!(ok("2000").as_amount(), Some(Amount(2000)));
        assert_eq!(ok("-1").as_amount(), None);
        assert_eq!(ok("2000.0").as_amount(), None);
        assert_eq!(ok(r#""1.5""#).as_amount(), None);
        assert_eq!(Value::from(Amount(7)).to_string(), r#""7""#);
    }

    #[test]
    fn string_escapes_decode() {
        assert_eq!(ok(r#""a\"b\\c\/d\b\f\n\r\t""#).as_str(), Some("a\"b\\c/d\u{8}\u{c}\n\r\t"));
        assert_eq!(ok(r#""\u00e9\u20AC""#).as_str(), Some("é€"));
        assert_eq!(ok(r#""\ud83d\ude00""#).as_str(), Some("😀"));
        assert_eq!(ok(r#""\u0000""#).as_str(), Some("\0"));
        assert_eq!(ok("\"ünïcødé 😀\"").as_str(), Some("ünïcødé 😀"));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let bad: &[&[u8]] = &[
            b"",
            b"   ",
            b"nul",
            b"nulls",
            b"True",
            b"01",
            b"-",
            b"-a",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"+1",
            b"0x10",
            b"NaN",
            b"Infinity",
            b"1e999",
            b"-1e999",
            b"\"abc",
            b"\"\\",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\\u12g4\"",
            b"\"\\ud800\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\udc00\"",
            b"\"tab\there\"",
            b"\"\n\"",
            b"[",
            b"[1",
            b"[1,",
            b"[1,]",
            b"[,1]",
            b"[1 2]",
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1,}",
            b"{a:1}",
            b"{1:1}",
            b"{\"a\" 1}",
            b"{\"a\":1 \"b\":2}",
            b"1 2",
            b"{} x",
            b"'a'",
            b"\xff",
            b"\"\xc3\"",
            b"\"\xed\xa0\x80\"",
            b"\xef\xbb\xbf{}",
        ];
        for input in bad {
            assert!(parse(input).is_err(), "accepted {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn errors_say_where() {
        let e = parse(b"[1, x]").unwrap_err();
        assert_eq!(e.offset, 4);
        assert_eq!(e.to_string(), "invalid JSON at byte 4: expected a value");
    }

    #[test]
    fn nesting_is_limited() {
        let deep_ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(deep_ok.as_bytes()).is_ok());
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(too_deep.as_bytes()).is_err());
        let objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH + 1), "}".repeat(MAX_DEPTH + 1));
        assert!(parse(objects.as_bytes()).is_err());
        // Far past the limit: still an error, not a stack overflow.
        assert!(parse("[".repeat(100_000).as_bytes()).is_err());
    }

    #[test]
    fn repeated_keys_keep_the_last_value() {
        let v = ok(r#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(v.to_string(), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn serializes_compactly_and_round_trips() {
        let v = Value::object()
            .with("s", "quote\" backslash\\ nl\n ctl\u{1} é😀")
            .with("n", -5i64)
            .with("f", 12.5)
            .with("whole", 80.0)
            .with("none", Option::<u64>::None)
            .with("list", vec![Value::from(true), Value::Null]);
        let text = v.to_string();
        assert_eq!(
            text,
            r#"{"s":"quote\" backslash\\ nl\n ctl\u0001 é😀","n":-5,"f":12.5,"whole":80.0,"none":null,"list":[true,null]}"#
        );
        let back = ok(&text);
        assert_eq!(back.get("s"), v.get("s"));
        assert_eq!(back.get("whole").and_then(Value::as_u64), Some(80));
        assert_eq!(ok(&back.to_string()), back);
        assert_eq!(Value::from(f64::NAN).to_string(), "null");
    }

    #[test]
    fn getters_answer_none_for_the_wrong_kind() {
        let v = ok(r#"{"a":[1,"x"],"t":true}"#);
        assert_eq!(v.get("a").and_then(|a| a.at(1)).and_then(Value::as_str), Some("x"));
        assert_eq!(v.get("a").and_then(|a| a.at(2)), None);
        assert_eq!(v.get("t").and_then(Value::as_bool), Some(true));
        assert_eq!(v.get("t").and_then(Value::as_str), None);
        assert_eq!(v.get("missing"), None);
        assert_eq!(Value::from(1u8).get("a"), None);
        assert_eq!(v.as_object().map(<[_]>::len), Some(2));
        assert!(Value::Null.is_null());
    }

    #[test]
    fn insert_and_remove_edit_objects_only() {
        let mut v = Value::object().with("a", 1u8).with("b", 2u8);
        assert_eq!(v.insert("a", 3u8), Some(Value::from(1u8)));
        assert_eq!(v.remove("b"), Some(Value::from(2u8)));
        assert_eq!(v.to_string(), r#"{"a":3}"#);
        let mut not_object = Value::from("x");
        assert_eq!(not_object.insert("a", 1u8), None);
        assert_eq!(not_object.remove("a"), None);
        assert_eq!(not_object, Value::from("x"));
    }

    /// A cheap deterministic fuzz: every prefix, and many byte-level mutations, of valid
    /// documents must parse or fail without panicking, and whatever parses must round-trip.
    #[test]
    fn mutations_never_panic() {
        let seeds: &[&[u8]] = &[
            br#"{"inventory":{"milk":1,"eggs":8},"ts":1700000000000,"ok":true,"n":null}"#,
            br#"[1,-2.5e-3,"\u00e9\ud83d\ude00\n",[[]],{}]"#,
            br#"{"rain_probability": 80, "temperature_c": 12.5}"#,
        ];
        let alphabet = b"{}[]\",:\\u0123456789eE+-.tfnrl \xff\xc3\x80";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds {
            for end in 0..=seed.len() {
                check_no_panic(&seed[..end]);
            }
            for _ in 0..3000 {
                let mut doc = seed.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() % doc.len() as u64) as usize;
                    let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                    match next() % 3 {
                        0 => doc[at] = byte,
                        1 => doc.insert(at, byte),
                        _ => {
                            doc.remove(at);
                        }
                    }
                    if doc.is_empty() {
                        break;
                    }
                }
                check_no_panic(&doc);
            }
        }
    }

    fn check_no_panic(input: &[u8]) {
        if let Ok(v) = parse(input) {
            assert_eq!(parse(v.to_string().as_bytes()).as_ref(), Ok(&v), "{:?}", String::from_utf8_lossy(input));
        }
    }
}
