//! Reading back what the store wrote: JSON whose floats keep every digit. serde_json, without
//! its `float_roundtrip` feature, may read a float of 17 significant digits one step off (and
//! turning that feature on for the workspace would change what the stages read back from their
//! own JSON files, so their outputs); a manifest's key inputs must give back the float they were
//! written from, or its key no longer re-derives. This reader parses numbers with the standard
//! library (exact) into a [`serde_json::Value`], which then becomes the type.
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

/// `bytes` as a `T`, floats exact; errors say where.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut reader = Reader { bytes, at: 0 };
    reader.space();
    let value = reader.value(0)?;
    reader.space();
    if reader.at != bytes.len() {
        return Err(reader.error("trailing characters"));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Nesting deeper than this is refused (no stack overflow on hostile input).
const DEPTH: usize = 128;

impl Reader<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn space(&mut self) {
        while self.bytes.get(self.at).is_some_and(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.space();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", byte as char)))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.space();
        match self.bytes.get(self.at) {
            None => Err(self.error("unexpected end")),
            Some(b'{') => {
                self.at += 1;
                let mut map = Map::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Value::Object(map));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    self.expect(b':')?;
                    let value = self.value(depth + 1)?;
                    map.insert(key, value);
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Value::Object(map));
                        }
                        _ => return Err(self.error("expected `,` or `}`")),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.error("expected `,` or `]`")),
                    }
                }
            }
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn word(&mut self, word: &str, value: Value) -> Result<Value, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("unexpected word"))
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| self.error("bad number"))?;
        // JSON's grammar is stricter than Rust's float syntax: check the shape first.
        let digits = text.strip_prefix('-').unwrap_or(text);
        let (mantissa, exponent) = match digits.find(['e', 'E']) {
            Some(i) => (&digits[..i], Some(&digits[i + 1..])),
            None => (digits, None),
        };
        let (whole, fraction) = match mantissa.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (mantissa, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let valid = all_digits(whole)
            && (whole == "0" || !whole.starts_with('0'))
            && fraction.is_none_or(all_digits)
            && exponent.is_none_or(|e| all_digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
        if !valid {
            return Err(self.error("bad number"));
        }
        if fraction.is_none() && exponent.is_none() {
            if let Ok(n) = text.parse::<u64>() {
                return Ok(Value::Number(n.into()));
            }
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Value::Number(n.into()));
            }
        }
        let parsed = text.parse::<f64>().ok().filter(|f| f.is_finite());
        parsed.and_then(Number::from_f64).map(Value::Number).ok_or_else(|| self.error("bad number"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.at;
            while self.bytes.get(self.at).is_some_and(|b| *b != b'"' && *b != b'\\' && *b >= 0x20) {
                self.at += 1;
            }
            out.push_str(
                std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| self.error("not UTF-8"))?,
            );
            match self.bytes.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let escape = *self.bytes.get(self.at).ok_or_else(|| self.error("unexpected end"))?;
                    self.at += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&first) {
                                if !self.bytes[self.at..].starts_with(b"\\u") {
                                    return Err(self.error("lone surrogate"));
                                }
                                self.at += 2;
                                let second = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&second) {
                                    return Err(self.error("lone surrogate"));
                                }
                                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                            } else {
                                first
                            };
                            out.push(char::from_u32(code).ok_or_else(|| self.error("bad escape"))?);
                        }
                        _ => return Err(self.error("bad escape")),
                    }
                }
                Some(_) => return Err(self.error("control character in a string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let text = self.bytes.get(self.at..self.at + 4).ok_or_else(|| self.error("unexpected end"))?;
        let text = std::str::from_utf8(text).map_err(|_| self.error("bad escape"))?;
        let code = u32::from_str_radix(text, 16).map_err(|_| self.error("bad escape"))?;
        self.at += 4;
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_writes_with_exact_floats() {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let float = f64::from_bits(x);
            if !float.is_finite() {
                continue;
            }
            let value =
                serde_json::json!({"f": float, "n": [x, -(x as i64 >> 1), 0.5], "s": "a\"\\\u{1b}é😀\n"});
            let text = serde_json::to_vec_pretty(&value).unwrap();
            let back: Value = from_slice(&text).unwrap();
            assert_eq!(back, value, "{float:e}");
            assert_eq!(serde_json::to_vec(&back).unwrap(), serde_json::to_vec(&value).unwrap());
        }
        let back: Value = from_slice(br#"{"lr": 3.9550342389999997}"#).unwrap();
        assert_eq!(back["lr"].as_f64(), Some(3.9550342389999997));
    }

    #[test]
    fn refuses_what_is_not_json() {
        for text in
            ["", "{", "{\"a\": }", "[1,]", "01", "1.", ".5", "1e", "\"\\x\"", "[1] x", "nul", "\"\\ud800\""]
        {
            assert!(from_slice::<Value>(text.as_bytes()).is_err(), "{text}");
        }
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        assert!(from_slice::<Value>(deep.as_bytes()).is_err());
    }
}
